/**
 * Helpers for the snapshot and backing-chain tests: images with mixed content made by
 * qemu-io, the guest view as qemu-img reads it (active layer or an internal snapshot), and
 * qemu-img check verdicts.
 */
import * as assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { qemuImg, run } from '../helpers';

export const KiB = 1024;
export const MiB = 1024 * KiB;

/** Runs qemu-io commands on an image (format given, so raw files are not probed). */
export function qemuIo(file: string, cmds: string[], format = 'qcow2'): void {
  const r = run('qemu-io', ['-f', format, ...cmds.flatMap((c) => ['-c', c]), file]);
  assert.equal(r.status, 0, `qemu-io ${cmds.join('; ')} ${file}: ${r.stderr}`);
  assert.doesNotMatch(r.stdout, /error|failed/i, `qemu-io ${cmds.join('; ')}: ${r.stdout}`);
}

/** sha256 of the guest view qemu-img reads: the active layer, or internal snapshot `snapshot` (convert -l). */
export function qemuHash(file: string, snapshot?: string): string {
  const out = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.view.raw`);
  try {
    qemuImg('convert', ...(snapshot !== undefined ? ['-l', snapshot] : []), '-O', 'raw', file, out);
    return createHash('sha256').update(fs.readFileSync(out)).digest('hex');
  } finally {
    fs.rmSync(out, { force: true });
  }
}

export interface QemuCheck {
  status: number;
  corruptions: number;
  leaks: number;
  /** The problem lines qemu-img check printed (stderr). */
  messages: string[];
}

export function qemuCheck(file: string, repair?: 'leaks' | 'all'): QemuCheck {
  const r = run('qemu-img', ['check', '--output=json', ...(repair ? ['-r', repair] : []), file]);
  let json: Record<string, number> = {};
  try {
    json = JSON.parse(r.stdout) as Record<string, number>;
  } catch {
    assert.fail(`qemu-img check ${file} printed no report: ${r.stderr}`);
  }
  return { status: r.status, corruptions: json.corruptions ?? 0, leaks: json.leaks ?? 0, messages: r.stderr.split('\n').filter(Boolean) };
}

/** qemu-img check finds nothing wrong: no corruption, no leak. */
export function assertClean(file: string, what = ''): void {
  const c = qemuCheck(file);
  assert.equal(c.status, 0, `qemu-img check ${file} ${what}: ${JSON.stringify(c)}`);
}

/** The snapshot table as qemu-img lists it: [id, name, vm-state-size, icount] rows. */
export function qemuSnapshots(file: string): { id: string; name: string; 'vm-state-size': number; icount?: number; 'date-sec': number }[] {
  const info = JSON.parse(qemuImg('info', '--output=json', '-U', file)) as { snapshots?: { id: string; name: string; 'vm-state-size': number; icount?: number; 'date-sec': number }[] };
  return info.snapshots ?? [];
}

export function virtualSize(file: string): number {
  return (JSON.parse(qemuImg('info', '--output=json', '-U', file)) as { 'virtual-size': number })['virtual-size'];
}

/**
 * A qcow2 image with data clusters, compressed clusters, zero clusters and holes, made by
 * qemu-img and qemu-io, `size` bytes (default 8 MiB).
 */
export function mixedImage(file: string, options = '', size = 8 * MiB, seed = 1): string {
  qemuImg('create', '-q', '-f', 'qcow2', ...(options ? ['-o', options] : []), file, String(size));
  const p = (n: number) => (seed * 37 + n) & 0xff || 1;
  qemuIo(file, [
    `write -P ${p(1)} 0 ${Math.min(size, MiB)}`,
    `write -c -P ${p(2)} ${size / 4} 128k`,
    `write -z ${size / 2} 256k`,
    `write -P ${p(3)} ${size / 2 + 256 * KiB} 8k`,
    `write -P ${p(4)} ${size - 64 * KiB} 64k`,
  ]);
  return file;
}
