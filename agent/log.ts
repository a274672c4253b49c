import pino, { type Logger } from 'pino';
import type { LogLevel } from './config/types.ts';

/**
 * Paths pino blanks out wherever they appear in a log object. The agent never logs headers or
 * credentials on purpose; this is the safety net for the day somebody does.
 */
export const REDACTED_PATHS = [
  'authorization',
  'Authorization',
  'proxyAuthorization',
  'password',
  'token',
  'access_token',
  'client_secret',
  '*.authorization',
  '*.Authorization',
  '*["proxy-authorization"]',
  '*["Proxy-Authorization"]',
  '*.password',
  '*.token',
  '*.access_token',
  '*.client_secret',
  'headers.authorization',
  'headers["proxy-authorization"]',
  'req.headers.authorization',
  'req.headers["proxy-authorization"]',
];

export function createLogger(level: LogLevel, destination?: pino.DestinationStream): Logger {
  const options: pino.LoggerOptions = {
    level,
    base: { pid: process.pid },
    redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
  };
  return destination ? pino(options, destination) : pino(options);
}
