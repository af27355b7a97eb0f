/** Running the crash writer and modelling what must have survived it, for every format's crash test. */
import * as assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as path from 'node:path';
import { crashOps } from './crash-ops';

const SECTOR = 512;
const WRITER = path.join(__dirname, 'crash-writer.js');

export interface Outcome {
  /** Highest operation index that began. */
  started: number;
  /** Index of the last flush that finished, -1 if none. */
  flushed: number;
}

/** Runs the writer on `file` (opened with `open`, JSON-serialisable OpenOptions) and SIGKILLs it after `afterMs`. */
export function runAndKill(format: string, file: string, seed: number, afterMs: number, open?: object): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    const args = [WRITER, format, file, String(seed), ...(open ? [JSON.stringify(open)] : [])];
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), afterMs);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      if (signal !== 'SIGKILL') return reject(new Error(`writer exited on its own (code ${code}): ${err}`));
      const last = (k: string) => Math.max(-1, ...out.split('\n').filter((l) => l.startsWith(`${k} `)).map((l) => Number(l.slice(2))));
      resolve({ started: last('s'), flushed: last('f') });
    });
  });
}

/**
 * Checks `got` (the disk after the kill) against the operations replayed on `base` (the disk
 * before): every sector last touched by an operation before the last finished flush must hold
 * what it wrote. Sectors of unflushed operations and of discards may hold either version.
 */
export function assertFlushedSurvived(got: Buffer, base: Buffer, seed: number, clusterSize: number, o: Outcome, what: string): void {
  const want = Buffer.from(base);
  const known = new Uint8Array(base.byteLength / SECTOR).fill(1);
  let i = 0;
  for (const op of crashOps(seed, base.byteLength, clusterSize)) {
    if (i > o.started) break;
    const s0 = op.offset / SECTOR;
    const s1 = (op.offset + op.length) / SECTOR;
    if (op.kind === 'write' || op.kind === 'compressed') want.set(op.data!, op.offset);
    else if (op.kind === 'zero') want.fill(0, op.offset, op.offset + op.length);
    if (op.kind === 'discard' || (i > o.flushed && op.kind !== 'flush')) known.fill(0, s0, s1);
    else if (op.kind !== 'flush') known.fill(1, s0, s1);
    i++;
  }
  for (let s = 0; s < known.length; s++) {
    const a = s * SECTOR;
    if (known[s] && got.compare(want, a, a + SECTOR, a, a + SECTOR) !== 0) {
      assert.fail(`${what}: seed ${seed}: sector ${s} differs from what was flushed (started ${o.started}, flushed ${o.flushed})`);
    }
  }
}
