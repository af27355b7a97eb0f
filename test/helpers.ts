/** Shared test helpers: temp dirs, running qemu-img (the oracle) and img, hashing files. */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export const ROOT = path.resolve(__dirname, '..', '..');
export const IMG = path.join(ROOT, 'bin', 'img');

const tempDirs: string[] = [];
process.on('exit', () => {
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
});

/** A fresh temp directory, removed when the process exits. */
export function tempDir(prefix = 'img-test-'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  tempDirs.push(dir);
  return dir;
}

/** Runs qemu-img and returns stdout; throws with stderr on a non-zero exit. */
export function qemuImg(...args: string[]): string {
  return execFileSync('qemu-img', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

export interface RunResult {
  status: number;
  stdout: string;
  stderr: string;
}

/** Runs a command and returns its status and output without throwing. */
export function run(cmd: string, args: string[], input?: string): RunResult {
  const r = spawnSync(cmd, args, { encoding: 'utf8', input, maxBuffer: 64 << 20 });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** Runs the img CLI. */
export function img(...args: string[]): RunResult {
  return run(process.execPath, [IMG, ...args]);
}

/** `qemu-img check --output=json` parsed; exit status kept. */
export function qemuCheck(file: string, ...extra: string[]): { status: number; report: Record<string, unknown> } {
  const r = run('qemu-img', ['check', '--output=json', ...extra, file]);
  let report: Record<string, unknown> = {};
  try {
    report = JSON.parse(r.stdout);
  } catch {
    report = { stderr: r.stderr };
  }
  return { status: r.status, report };
}

export function sha256File(file: string): string {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

/** Deterministic pseudo-random bytes (xorshift32) so failures reproduce. */
export function prng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s;
  };
}

export function randomBytes(rand: () => number, n: number): Buffer {
  const b = Buffer.alloc(n);
  const words = n >>> 2;
  for (let i = 0; i < words; i++) b.writeUInt32LE(rand(), i * 4);
  for (let i = words * 4; i < n; i++) b[i] = rand() & 0xff;
  return b;
}
