/**
 * seSparse (ESXi space-efficient sparse) extents, read-only: fixtures built here from the
 * layout qemu's block/vmdk.c reads (constant header, volatile header, 64-bit grain directory
 * and tables), read through a parent, compared byte for byte with qemu-img's reading of the
 * same files; damaged fields are refused.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ImageError } from '../../../src/block/errors';
import { openImage } from '../../../src/formats/index';
import { prng, qemuImg, randomBytes, tempDir } from '../../helpers';
import { writeAt } from '../../convert/sample-disk';
import { makeRaw, MiB } from '../qcow2/fixtures';
import { assertReadsLikeQemu } from './vmdk-fixture';

const dir = tempDir('img-vmdk-sesparse-');
const SECTORS = 32768; // 16 MiB: 4096 grains of 4 KiB, one grain table
const GT_AT = 3; // sectors: const header, volatile header, grain directory (one sector), then the table
const GRAINS_AT = GT_AT + 64;
const ALLOCATED = 0x3000000000000000n;
let n = 0;

interface Grain {
  grain: number;
  entry: 'data' | 'zero' | 'unmapped';
  cluster?: number;
}

/** Writes an seSparse extent and its descriptor (a delta of `parent` if given); returns the descriptor. */
function makeSeSparse(grains: Grain[], parent?: string, patch?: (extent: string) => void): string {
  const base = `se${n++}`;
  const extent = path.join(dir, `${base}-sesparse.vmdk`);
  const c = Buffer.alloc(512);
  const fields: [number, bigint][] = [[0, 0xcafebaben], [1, 0x200000001n], [2, BigInt(SECTORS)], [3, 8n], [4, 64n], [10, 1n], [11, 1n], [16, 2n], [17, 1n], [18, BigInt(GT_AT)], [19, 64n], [24, BigInt(GRAINS_AT)]];
  for (const [i, v] of fields) c.writeBigUInt64LE(v, i * 8);
  const v = Buffer.alloc(512);
  v.writeBigUInt64LE(0xcafecafen, 0);
  const gd = Buffer.alloc(512);
  gd.writeBigUInt64LE(0x1000000000000000n, 0); // grain table index 0
  const gt = Buffer.alloc(64 * 512);
  fs.writeFileSync(extent, Buffer.concat([c, v, gd, gt]));
  const rand = prng(grains.length + 7);
  for (const g of grains) {
    let e = g.entry === 'zero' ? 0x2000000000000000n : 0x1000000000000000n;
    if (g.entry === 'data') {
      const cl = BigInt(g.cluster!);
      e = ALLOCATED | ((cl & 0xfffn) << 48n) | (cl >> 12n);
      writeAt(extent, (GRAINS_AT + g.cluster! * 8) * 512, randomBytes(rand, 4096));
    }
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(e);
    writeAt(extent, GT_AT * 512 + g.grain * 8, b);
  }
  patch?.(extent);
  const desc = path.join(dir, `${base}.vmdk`);
  fs.writeFileSync(
    desc,
    `# Disk DescriptorFile\nversion=1\nCID=abcdef01\nparentCID=${parent ? 'fffffffe' : 'ffffffff'}\ncreateType="seSparse"\n` +
      (parent ? `parentFileNameHint="${path.basename(parent)}"\n` : '') +
      `\n# Extent description\nRW ${SECTORS} SESPARSE "${path.basename(extent)}"\n\n#DDB\nddb.virtualHWVersion = "14"\n`,
  );
  return desc;
}

const GRAINS: Grain[] = [
  { grain: 0, entry: 'data', cluster: 0 },
  { grain: 1, entry: 'data', cluster: 4097 }, // a grain number past 12 bits: both halves of the entry
  { grain: 5, entry: 'zero' },
  { grain: 6, entry: 'unmapped' },
  { grain: 4095, entry: 'data', cluster: 1 },
];

test('reads an seSparse extent as qemu does: data, zeroed and unmapped grains, holes', async () => {
  await assertReadsLikeQemu(makeSeSparse(GRAINS));
});

test('an seSparse delta reads through its parent where grains are unallocated, zero where zeroed', async () => {
  const parent = path.join(dir, 'parent.vmdk');
  const raw = path.join(dir, 'parent.raw');
  makeRaw(raw, 16 * MiB, 3);
  qemuImg('convert', '-O', 'vmdk', raw, parent);
  const cid = /CID=([0-9a-f]+)/.exec(fs.readFileSync(parent).subarray(512, 1024).toString('latin1'))![1];
  const top = makeSeSparse(GRAINS, parent);
  fs.writeFileSync(top, fs.readFileSync(top, 'utf8').replace('parentCID=fffffffe', `parentCID=${cid}`));
  await assertReadsLikeQemu(top);
  const image = await openImage(top);
  try {
    await assert.rejects(image.write(0, new Uint8Array(512)), (e: ImageError) => e.code === 'READ_ONLY');
  } finally {
    await image.close();
  }
});

test('damaged seSparse extents are refused clearly', async () => {
  const le = (v: bigint) => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(v);
    return b;
  };
  const cases: [(f: string) => void, string, RegExp][] = [
    [(f) => writeAt(f, 0, le(0x1234n)), 'BAD_HEADER', /not an seSparse extent/],
    [(f) => writeAt(f, 8, le(0x300000001n)), 'UNSUPPORTED', /version/],
    [(f) => writeAt(f, 3 * 8, le(16n)), 'UNSUPPORTED', /grain_size/],
    [(f) => writeAt(f, 512 + 24, le(1n)), 'UNSUPPORTED', /journal/],
    [(f) => writeAt(f, 16 * 8, le(1n << 40n)), 'CORRUPT', /grain_dir_offset/],
    [(f) => writeAt(f, 2 * 512, le(0x2000000000000000n)), 'CORRUPT', /grain directory entry 0/],
    [(f) => writeAt(f, 2 * 512, le(0x1000000000ffffffn)), 'CORRUPT', /outside the file/],
    [(f) => writeAt(f, GT_AT * 512 + 8 * 9, le(0x4000000000000000n)), 'CORRUPT', /grain table entry/],
    [(f) => writeAt(f, GT_AT * 512 + 8 * 9, le(ALLOCATED | 0xffffffffn)), 'CORRUPT', /grain table entry/],
  ];
  for (const [patch, code, re] of cases) {
    const desc = makeSeSparse(GRAINS, undefined, patch);
    const err = await (async () => {
      const image = await openImage(desc, { readOnly: true });
      try {
        await image.read(0, new Uint8Array(image.size));
      } finally {
        await image.close();
      }
    })().then(
      () => null,
      (e) => e,
    );
    assert.ok(err instanceof ImageError, `${re} was not refused: ${err}`);
    assert.equal(err.code, code, err.message);
    assert.match(err.message, re);
  }
});
