/** Collects tables and goal verdicts; renders BENCHMARKS.md. */
import { readFile } from 'node:fs/promises';
import { availableParallelism, cpus, release, totalmem, type } from 'node:os';
import { runCommand } from '../../test/fixtures/process.ts';
import { GiB } from './client.ts';

export type Verdict = 'met' | 'NOT met' | 'not measured' | 'n/a';

export interface Goal {
  goal: string;
  measured: string;
  verdict: Verdict;
}

export interface Table {
  header: string[];
  rows: string[][];
}

export function renderTable(table: Table): string {
  const line = (cells: string[]): string => `| ${cells.map((c) => c.replace(/\|/g, '\\|')).join(' | ')} |`;
  return [line(table.header), line(table.header.map(() => '---')), ...table.rows.map(line)].join('\n');
}

export class Report {
  readonly sections: string[] = [];
  readonly goals: Goal[] = [];
  readonly notes: string[] = [];

  section(title: string, intro: string, tables: Table[], after: string[] = []): string {
    const text = [`## ${title}`, '', intro, '', ...tables.flatMap((t) => [renderTable(t), '']), ...after.map((a) => `${a}\n`)].join('\n').trimEnd();
    this.sections.push(text);
    return text;
  }

  goal(goal: string, measured: string, verdict: Verdict): void {
    this.goals.push({ goal, measured, verdict });
  }
}

export interface Machine {
  cpu: string;
  cores: number;
  ramGiB: number;
  node: string;
  kernel: string;
  date: string;
  tools: string[];
}

async function firstLine(cmd: string, args: string[]): Promise<string> {
  try {
    const res = await runCommand(cmd, args, { timeoutMs: 10_000 });
    return (res.stdout || res.stderr).split('\n')[0]?.trim() ?? '';
  } catch {
    return `${cmd}: not found`;
  }
}

export async function describeMachine(): Promise<Machine> {
  const cpuinfo = await readFile('/proc/cpuinfo', 'utf8').catch(() => '');
  const model = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1]?.trim() ?? cpus()[0]?.model ?? 'unknown';
  const tools = await Promise.all([
    firstLine('nginx', ['-v']),
    firstLine('/usr/bin/docker-registry', ['--version']),
    firstLine('containerd', ['--version']),
    firstLine('curl', ['--version']),
  ]);
  return {
    cpu: model,
    cores: availableParallelism(),
    ramGiB: totalmem() / GiB,
    node: process.version,
    kernel: `${type()} ${release()}`,
    date: new Date().toISOString(),
    tools: tools.map((t) => t.replace(/^nginx version: /, '')),
  };
}

export function renderReport(machine: Machine, settings: string[], report: Report): string {
  const goals: Table = {
    header: ['Goal', 'Measured', 'Verdict'],
    rows: report.goals.map((g) => [g.goal, g.measured, g.verdict === 'met' ? 'met' : `**${g.verdict}**`]),
  };
  return [
    '# Benchmarks',
    '',
    'Written by `bash scripts/bench` (`npm run bench`). Everything runs on loopback on this machine: nginx, the',
    'distribution registry (`docker-registry`, plain and in proxy mode), the Connectivity Proxy double, a counting',
    'proxy, containerd 1.6 and the agent (`dist/agent/main.js`, compiled as in the image, as a child process, log level info). Figures are',
    'medians of the runs (spread min–max in parentheses); ratios are against references measured in the same run.',
    '',
    '## Machine',
    '',
    renderTable({
      header: ['', ''],
      rows: [
        ['CPU', machine.cpu],
        ['Cores', String(machine.cores)],
        ['RAM', `${machine.ramGiB.toFixed(1)} GiB`],
        ['Node', machine.node],
        ['Kernel', machine.kernel],
        ['Date', machine.date],
        ['Tools', machine.tools.join('; ')],
      ],
    }),
    '',
    ...settings.map((s) => `- ${s}`),
    '',
    '## Goals',
    '',
    renderTable(goals),
    '',
    ...(report.notes.length > 0 ? [...report.notes.map((n) => `- ${n}`), ''] : []),
    ...report.sections.flatMap((s) => [s, '']),
  ].join('\n');
}
