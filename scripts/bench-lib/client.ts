/** HTTP clients that fetch a URL, discard the body and report bytes and seconds. */
import { spawn } from 'node:child_process';
import { Client } from 'undici';

export interface Sample {
  status: number;
  bytes: number;
  /** From request start to the last body byte (curl: its own time_total, without process start-up). */
  seconds: number;
}

export interface HttpClient {
  readonly name: string;
  /** GET `url` (through the HTTP proxy `proxy`, absolute-form, when given). */
  get(url: string, proxy?: string): Promise<Sample>;
}

/** curl -o /dev/null: a separate process, so it never shares an event loop with anything measured. */
export const curlClient: HttpClient = {
  name: 'curl -o /dev/null',
  get(url, proxy) {
    const args = ['-sS', '-o', '/dev/null', '--max-time', '900', '-w', '%{http_code} %{size_download} %{time_total}'];
    if (proxy === undefined) args.push('--noproxy', '*');
    else args.push('--proxy', proxy);
    args.push(url);
    return new Promise<Sample>((resolve, reject) => {
      const child = spawn('curl', args, { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
      child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
      child.once('error', reject);
      child.once('close', (code) => {
        const [status, bytes, seconds] = out.trim().split(' ').map(Number);
        if (code !== 0 || status === undefined || bytes === undefined || seconds === undefined) {
          reject(new Error(`curl ${url} failed (exit ${String(code)}): ${err.trim()} ${out.trim()}`));
          return;
        }
        resolve({ status, bytes, seconds });
      });
    });
  },
};

/** undici in this process; a new connection per request (like curl). */
export const undiciClient: HttpClient = {
  name: 'undici request (in-process)',
  async get(url, proxy) {
    const target = new URL(url);
    const origin = proxy ?? target.origin;
    const path = proxy === undefined ? `${target.pathname}${target.search}` : url;
    const client = new Client(origin);
    const started = performance.now();
    try {
      const res = await client.request({ method: 'GET', path, headers: { host: target.host } });
      let bytes = 0;
      for await (const chunk of res.body) bytes += (chunk as Buffer).length;
      return { status: res.statusCode, bytes, seconds: (performance.now() - started) / 1000 };
    } finally {
      await client.close();
    }
  },
};

/** One GET that must return `size` bytes with status 200. */
export async function getExact(client: HttpClient, url: string, size: number, proxy?: string): Promise<Sample> {
  const sample = await client.get(url, proxy);
  if (sample.status !== 200 || sample.bytes !== size) {
    throw new Error(`GET ${url}${proxy ? ` via ${proxy}` : ''}: status ${sample.status}, ${sample.bytes} of ${size} bytes`);
  }
  return sample;
}

export interface ParallelResult {
  /** Wall time from launching the first client to the last one finishing. */
  totalSeconds: number;
  samples: Sample[];
}

/** `urls.length` concurrent GETs. */
export async function getParallel(client: HttpClient, urls: readonly string[], size: number, proxy?: string): Promise<ParallelResult> {
  const started = performance.now();
  const samples = await Promise.all(urls.map((url) => getExact(client, url, size, proxy)));
  return { totalSeconds: (performance.now() - started) / 1000, samples };
}

export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;

export function mibPerSecond(sample: Sample): number {
  return sample.bytes / MiB / sample.seconds;
}
