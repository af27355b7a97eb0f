/** Shared helpers for the vmdk tests: images made by qemu-img, read back through the library. */
import * as assert from 'node:assert/strict';
import { qemuImg, run } from '../../helpers';
import { assertReadsLikeQemu as assertLikeQemu } from '../read-like-qemu';

export const SUBFORMATS = ['monolithicSparse', 'monolithicFlat', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat', 'streamOptimized'];

export function qemuIo(file: string, ...cmds: string[]): void {
  const r = run('qemu-io', ['-f', 'vmdk', ...cmds.flatMap((c) => ['-c', c]), file]);
  assert.equal(r.status, 0, r.stderr);
  assert.doesNotMatch(r.stdout, /error|failed/i, r.stdout);
}

/** img reads `file` as qemu-img does. */
export const assertReadsLikeQemu = (file: string): Promise<void> => assertLikeQemu(file, 'vmdk');

/** `qemu-img info --output=json` of a file, parsed. */
export function qemuInfo(file: string): Record<string, any> {
  return JSON.parse(qemuImg('info', '--output=json', file));
}
