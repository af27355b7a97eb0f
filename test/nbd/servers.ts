/**
 * NBD servers as real processes for the tests: `img serve` and qemu-nbd (the peer), started
 * on a unix socket or a loopback port and always stopped (at the latest when the test process exits).
 */
import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { IMG } from '../helpers';

export interface Served {
  /** One URI per export, as img serve printed them. */
  uris: string[];
  proc: ChildProcess;
  stderr(): string;
  /** Sends the signal and resolves with the exit status (null when killed by a signal). */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
  /** Resolves with the exit status once the process exits on its own. */
  exited: Promise<number | null>;
}

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const p of live) p.kill('SIGKILL');
});

function track(proc: ChildProcess): { exited: Promise<number | null>; stderr: () => string } {
  live.add(proc);
  let err = '';
  proc.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((resolve) =>
    proc.once('exit', (code) => {
      live.delete(proc);
      resolve(code);
    }),
  );
  return { exited, stderr: () => err };
}

/** Starts `img serve ARGS…` and waits for the URI lines it prints once listening. */
export async function imgServe(args: string[], exports = 1, env: NodeJS.ProcessEnv = {}): Promise<Served> {
  const proc = spawn(process.execPath, [IMG, 'serve', ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  const { exited, stderr } = track(proc);
  let out = '';
  const uris = await new Promise<string[]>((resolve, reject) => {
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const lines = out.split('\n').filter(Boolean);
      if (out.endsWith('\n') && lines.length >= exports) resolve(lines);
    });
    void exited.then((code) => reject(new Error(`img serve exited (${code}) before listening: ${stderr()}`)));
  });
  return {
    uris,
    proc,
    stderr,
    exited,
    stop: (signal = 'SIGTERM') => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      return exited;
    },
  };
}

/** Starts qemu-nbd on a unix socket in `dir` and waits until it accepts connections. */
export async function qemuNbd(dir: string, args: string[]): Promise<Served & { uri: string }> {
  const socket = path.join(dir, `qemu-nbd-${Date.now()}-${Math.random().toString(36).slice(2)}.sock`);
  const proc = spawn('qemu-nbd', ['-k', socket, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  const { exited, stderr } = track(proc);
  const uri = `nbd+unix:///?socket=${socket}`;
  for (let i = 0; i < 200 && !fs.existsSync(socket); i++) {
    if (proc.exitCode !== null) throw new Error(`qemu-nbd failed: ${stderr()}`);
    await new Promise((r) => setTimeout(r, 25));
  }
  return {
    uri,
    uris: [uri],
    proc,
    stderr,
    exited,
    stop: (signal = 'SIGTERM') => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      return exited;
    },
  };
}

/** The port of an nbd://host:port/ URI as img serve prints it. */
export const portOf = (uri: string): string => /:(\d+)\//.exec(uri)![1];

/** Runs a command and throws with its stderr unless it succeeds. */
export function must(cmd: string, ...args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  return r.stdout;
}

/** Resident memory of a process in KiB, from /proc. */
export function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : 0;
}

/** A data/zero map in a common form, adjacent runs of one kind merged. */
export function mergeRuns<T>(runs: { start: number; length: number; value: T }[]): { start: number; length: number; value: T }[] {
  const out: { start: number; length: number; value: T }[] = [];
  for (const r of runs) {
    const last = out[out.length - 1];
    if (last && last.value === r.value && last.start + last.length === r.start) last.length += r.length;
    else out.push({ ...r });
  }
  return out;
}
