/** Shared helpers for the vmdk tests: images made by qemu-img, read back through the library. */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { openImage } from '../../../src/formats/index';
import { qemuImg, run, sha256File } from '../../helpers';
import { hashImage } from '../qcow2/fixtures';

export const SUBFORMATS = ['monolithicSparse', 'monolithicFlat', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat', 'streamOptimized'];

export function qemuIo(file: string, ...cmds: string[]): void {
  const r = run('qemu-io', ['-f', 'vmdk', ...cmds.flatMap((c) => ['-c', c]), file]);
  assert.equal(r.status, 0, r.stderr);
  assert.doesNotMatch(r.stdout, /error|failed/i, r.stdout);
}

/** Reads `file` through img (with its chain) and compares it with qemu's raw conversion of it. */
export async function assertReadsLikeQemu(file: string): Promise<void> {
  const expected = path.join(path.dirname(file), `expect-${path.basename(file)}.raw`);
  qemuImg('convert', '-O', 'raw', file, expected);
  const img = await openImage(file, { readOnly: true });
  try {
    assert.equal(img.format, 'vmdk');
    assert.equal(await hashImage(img), sha256File(expected), `${file} reads differently from qemu`);
    const want = fs.readFileSync(expected);
    for (const [off, len] of [[511, 3000], [65535, 70000], [img.size - 777, 777]]) {
      const b = Buffer.alloc(len);
      await img.read(off, b);
      assert.ok(b.equals(want.subarray(off, off + len)), `${file}: read at ${off}+${len}`);
    }
  } finally {
    await img.close();
    fs.rmSync(expected);
  }
}

/** `qemu-img info --output=json` of a file, parsed. */
export function qemuInfo(file: string): Record<string, any> {
  return JSON.parse(qemuImg('info', '--output=json', file));
}
