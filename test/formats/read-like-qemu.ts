/** The read check every format's tests share: img's view of an image equals qemu-img's. */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { openImage } from '../../src/formats/index';
import { qemuImg, sha256File } from '../helpers';
import { hashImage } from './qcow2/fixtures';

/**
 * Reads `file` through img (with its backing chain, format probed and expected to be `format`)
 * and compares it with qemu-img's raw conversion of it, whole and in unaligned small reads
 * that cross cluster, subcluster and grain boundaries.
 */
export async function assertReadsLikeQemu(file: string, format: string): Promise<void> {
  const expected = path.join(path.dirname(file), `expect-${path.basename(file)}.raw`);
  qemuImg('convert', '-O', 'raw', file, expected);
  const img = await openImage(file, { readOnly: true });
  try {
    assert.equal(img.format, format);
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
