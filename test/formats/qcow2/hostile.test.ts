/**
 * Hostile images: lying headers and tables give one-line ImageErrors naming the field,
 * never a crash, a hang or a huge allocation.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ImageError } from '../../../src/block/errors';
import { openImage } from '../../../src/formats/index';
import { qemuImg, tempDir } from '../../helpers';
import { MiB } from './fixtures';

const dir = tempDir('img-qcow2-hostile-');
let n = 0;

/** A small qcow2 (64k clusters) with data in its first clusters; compressed on request. */
function image(compress = false): string {
  const raw = path.join(dir, `h${n}.raw`);
  const buf = Buffer.alloc(MiB);
  for (let i = 0; i < buf.length; i++) buf[i] = (i * 7) & 0xff;
  fs.writeFileSync(raw, buf);
  const out = path.join(dir, `h${n++}.qcow2`);
  qemuImg('convert', '-f', 'raw', '-O', 'qcow2', ...(compress ? ['-c'] : []), raw, out);
  return out;
}

function patch(file: string, offset: number, bytes: Buffer): void {
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, bytes, 0, bytes.length, offset);
  fs.closeSync(fd);
}
const u32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v);
  return b;
};
const u64 = (v: bigint) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(v);
  return b;
};

function l2TableOf(file: string): number {
  const f = fs.readFileSync(file);
  const l1 = Number(f.readBigUInt64BE(40));
  return Number(f.readBigUInt64BE(l1) & 0x00fffffffffffe00n);
}

/** Opening (and reading everything) fails with one ImageError line naming `field`. */
async function assertRefused(file: string, field: RegExp, opts: { readOnly?: boolean; code?: string } = {}): Promise<void> {
  let err: unknown;
  try {
    const img = await openImage(file, { readOnly: opts.readOnly ?? true });
    try {
      await img.read(0, Buffer.alloc(img.size));
    } finally {
      await img.close();
    }
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof ImageError, `expected an ImageError, got ${String(err)}`);
  assert.ok(!err.message.includes('\n'), 'one line');
  assert.match(err.message, field);
  if (opts.code) assert.equal(err.code, opts.code);
}

test('huge l1_size', async () => {
  const f = image();
  patch(f, 36, u32(0x7fffffff));
  await assertRefused(f, /l1_size/, { code: 'BAD_HEADER' });
});

test('L1 table past the end of the file', async () => {
  const f = image();
  patch(f, 40, u64(1n << 40n));
  await assertRefused(f, /l1_table_offset/);
});

test('refcount table past the end of the file', async () => {
  const f = image();
  patch(f, 48, u64(1n << 45n));
  await assertRefused(f, /refcount_table_offset/);
});

test('cluster_bits 40', async () => {
  const f = image();
  patch(f, 20, u32(40));
  await assertRefused(f, /cluster_bits/);
});

test('refcount_order 7', async () => {
  const f = image();
  patch(f, 96, u32(7));
  await assertRefused(f, /refcount_order/);
});

test('unknown incompatible feature bit', async () => {
  const f = image();
  patch(f, 72, u64(1n << 40n));
  await assertRefused(f, /incompatible features.*bit 40/, { code: 'UNSUPPORTED' });
});

test('a backing file that is itself', async () => {
  const f = image();
  qemuImg('rebase', '-u', '-f', 'qcow2', '-b', path.basename(f), '-F', 'qcow2', f);
  await assertRefused(f, /backing chain loops/);
});

test('L1 entry pointing past the end of the file', async () => {
  const f = image();
  const l1 = Number(fs.readFileSync(f).readBigUInt64BE(40));
  patch(f, l1, u64((1n << 63n) | (1n << 36n)));
  await assertRefused(f, /L1 entry 0/, { code: 'CORRUPT' });
});

test('L2 entry pointing past the end of the file', async () => {
  const f = image();
  patch(f, l2TableOf(f), u64((1n << 63n) | (1n << 38n)));
  await assertRefused(f, /L2 entry .*past the end of the file/, { code: 'CORRUPT' });
  // Writing over it must not trust it either.
  const img = await openImage(f);
  await assert.rejects(img.write(100, Buffer.alloc(10, 1)), (e: unknown) => e instanceof ImageError && /L2 entry/.test(e.message));
  await img.close();
});

test('L2 entry with an unaligned host offset', async () => {
  const f = image();
  patch(f, l2TableOf(f), u64((1n << 63n) | 0x50200n));
  await assertRefused(f, /L2 entry .*unaligned/);
});

test('compressed descriptors that lie: past the end of the file, or pointing at garbage', async () => {
  const cb = 16n;
  const x = 62n - (cb - 8n);
  const lies = [
    (1n << 62n) | (1n << 35n), // past the end of the file
    (1n << 62n) | (3n << x) | 0x200n, // the header: not a deflate stream
  ];
  for (const lie of lies) {
    const f = image(true);
    patch(f, l2TableOf(f), u64(lie));
    await assertRefused(f, /L2 entry .*compressed/, { code: 'CORRUPT' });
  }
});

test('the corrupt bit: read-only open works, writable open and writes are refused', async () => {
  const f = image();
  patch(f, 72, u64(2n));
  await assertRefused(f, /marked corrupt/, { readOnly: false, code: 'CORRUPT' });
  const img = await openImage(f, { readOnly: true });
  const b = Buffer.alloc(4096);
  await img.read(0, b);
  assert.equal(b[1], 7);
  await assert.rejects(img.write(0, b), (e: unknown) => e instanceof ImageError && e.code === 'READ_ONLY');
  await img.close();
});

test('a refcount table entry past the end of the file is refused', async () => {
  const f = image();
  const rt = Number(fs.readFileSync(f).readBigUInt64BE(48));
  patch(f, rt, u64(1n << 44n));
  await assertRefused(f, /refcount table entry 0/, { readOnly: false });
});

test('truncated file', async () => {
  const f = image();
  fs.truncateSync(f, 100);
  await assertRefused(f, /qcow2 header|too short/);
});

test('an L2 entry pointing at the L1 table is not written through', async () => {
  const f = image();
  const l1 = Number(fs.readFileSync(f).readBigUInt64BE(40));
  patch(f, l2TableOf(f), u64((1n << 63n) | BigInt(l1)));
  const img = await openImage(f);
  await assert.rejects(img.write(0, Buffer.alloc(4096, 1)), (e: unknown) => e instanceof ImageError && /points into the L1 table/.test(e.message));
  await img.close();
  assert.equal(fs.readFileSync(f).readBigUInt64BE(l1) >> 63n, 1n, 'the L1 table is intact');
});
