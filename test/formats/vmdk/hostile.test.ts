/**
 * Hostile and damaged vmdks: descriptors written by hand (comments, CRLF, quoting, unknown
 * keys), truncated or lying descriptors and headers, extents outside their files, grain
 * tables past the end, lying grain markers, broken parent links. Each is read (or refused)
 * with a clear ImageError naming the problem: no crash, no hang, no huge allocation.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ImageError } from '../../../src/block/errors';
import { openImage } from '../../../src/formats/index';
import { img, qemuImg, tempDir } from '../../helpers';
import { makeRaw, MiB } from '../qcow2/fixtures';
import { writeAt } from '../../convert/sample-disk';

const dir = tempDir('img-vmdk-hostile-');
const SRC = path.join(dir, 'src.raw');
const srcBytes = makeRaw(SRC, 2 * MiB, 0x99);
let n = 0;
const fresh = (ext = 'vmdk') => path.join(dir, `h${n++}.${ext}`);

/** Opens (with the chain) and reads the whole disk; returns the error, or null when it read fine. */
async function openAndRead(file: string): Promise<ImageError | null> {
  try {
    const image = await openImage(file, { readOnly: true });
    try {
      const b = new Uint8Array(image.size);
      await image.read(0, b);
    } finally {
      await image.close();
    }
    return null;
  } catch (err) {
    if (!(err instanceof ImageError)) throw err;
    return err;
  }
}

async function assertRefused(file: string, code: string, message: RegExp): Promise<void> {
  const err = await openAndRead(file);
  assert.ok(err, `${file} was read without complaint`);
  assert.equal(err.code, code, err.message);
  assert.match(err.message, message);
  assert.ok(!err.message.includes('\n'), 'one line');
}

function sparseCopy(opts = 'subformat=monolithicSparse'): string {
  const f = fresh();
  qemuImg('convert', '-O', 'vmdk', '-o', opts, SRC, f);
  return f;
}

const u32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  return b;
};
const u64 = (v: bigint) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(v);
  return b;
};

test('hand-written descriptors: comments, CRLF, quoting, spaces, unknown keys and ZERO extents are understood', async () => {
  const flat = fresh('bin');
  fs.copyFileSync(SRC, flat);
  const text = [
    '# Disk DescriptorFile',
    '# written by hand',
    '',
    'version = 1',
    'encoding="UTF-8"',
    'CID = "fffffffe"   # inline comment',
    'parentCID=ffffffff',
    'isNativeSnapshot="no"',
    'createType = "monolithicFlat"',
    '',
    '# Extent description',
    `RW 2048 FLAT "${path.basename(flat)}" 0`,
    'RW 4096 ZERO',
    `RDONLY 2048 FLAT "${path.basename(flat)}" 2048`,
    '',
    '#DDB',
    'ddb.adapterType = "lsilogic"',
    'ddb.uuid.image = "a b c"',
    'ddb.somethingNew = 42',
  ].join('\r\n');
  const desc = fresh();
  fs.writeFileSync(desc, text);
  const image = await openImage(desc, { readOnly: true });
  try {
    assert.equal(image.size, 8 * 1024 * 512);
    const b = Buffer.alloc(image.size);
    await image.read(0, b);
    assert.ok(b.subarray(0, MiB).equals(srcBytes.subarray(0, MiB)));
    assert.ok(b.subarray(MiB, 3 * MiB).every((x) => x === 0));
    assert.ok(b.subarray(3 * MiB).equals(srcBytes.subarray(MiB)));
    const info = await image.info();
    assert.equal((info.formatSpecific!.data as { cid: number }).cid, 0xfffffffe);
  } finally {
    await image.close();
  }
  // Opened for writing, the RDONLY extent makes writes fail clearly.
  const rw = await openImage(desc, { readOnly: false });
  try {
    await assert.rejects(rw.write(0, new Uint8Array(512)), (e: ImageError) => e.code === 'READ_ONLY');
  } finally {
    await rw.close();
  }
});

test('truncated, garbled and lying descriptors are refused with the line or field named', async () => {
  const flat = fresh('bin');
  fs.copyFileSync(SRC, flat);
  const head = `# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="monolithicFlat"\n`;
  const cases: [string, string, RegExp][] = [
    [`${head}RW 4096 FL`, 'BAD_HEADER', /extent line 6/],
    [`${head}RW 4096 FLAT "${path.basename(flat)}"`, 'BAD_HEADER', /needs an offset/],
    [`${head}RW 999999999999999999999 FLAT "x" 0`, 'BAD_HEADER', /out of range/],
    [`${head}RW 4096 FLAT "${path.basename(flat)}" 1`, 'CORRUPT', /needs 2097152 bytes from offset 512/],
    [`${head}RW 8192 FLAT "${path.basename(flat)}" 0`, 'CORRUPT', /file holds 2097152 bytes/],
    [`${head}RW 4096 FLAT "missing.bin" 0`, 'NOT_FOUND', /missing\.bin/],
    [`${head}NOACCESS 4096 FLAT "${path.basename(flat)}" 0`, 'UNSUPPORTED', /NOACCESS/],
    [`${head}RW 4096 VMFSSPARSE "${path.basename(flat)}"`, 'UNSUPPORTED', /VMFSSPARSE/],
    [`${head}RW 4096 SESPARSE "${path.basename(flat)}"`, 'BAD_HEADER', /not an seSparse extent/],
    [`${head}RW 4096 SPARSE "${path.basename(flat)}"`, 'UNSUPPORTED', /KDMV/],
    [`# Disk DescriptorFile\nversion=1\nCID=1\nRW 4096 FLAT "${path.basename(flat)}" 0\n`, 'BAD_HEADER', /createType/],
    [`# Disk DescriptorFile\nversion=1\nCID=zz\ncreateType="monolithicFlat"\nRW 4096 FLAT "${path.basename(flat)}" 0\n`, 'BAD_HEADER', /CID 'zz'/],
    [`${head}\n`, 'BAD_HEADER', /no extents/],
    [`${head}this is not a key\n`, 'BAD_HEADER', /line 6/],
  ];
  for (const [text, code, re] of cases) {
    const f = fresh();
    fs.writeFileSync(f, text);
    await assertRefused(f, code, re);
  }
  const self = fresh();
  fs.writeFileSync(self, `${head}RW 1 FLAT "${path.basename(self)}" 0\n`);
  await assertRefused(self, 'CORRUPT', /descriptor file itself/);
  const many = fresh();
  fs.writeFileSync(many, head + `RW 1 ZERO\n`.repeat(9000));
  await assertRefused(many, 'BAD_HEADER', /9000 extents/);
});

test('damaged sparse headers: bad grain size, table size, huge capacity, truncated file, damaged newline check', async () => {
  const patches: [number, Buffer, string, RegExp][] = [
    [20, u64(3n), 'BAD_HEADER', /grainSize 3/],
    [20, u64(0n), 'BAD_HEADER', /grainSize 0/],
    [44, u32(100000), 'BAD_HEADER', /numGTEsPerGT 100000/],
    [4, u32(7), 'UNSUPPORTED', /version 7/],
    [12, u64(1n << 52n), 'BAD_HEADER', /capacity/],
    [12, u64(1n << 37n), 'CORRUPT', /grain directory of \d+ entries/],
    [56, u64(0xffffff00n), 'CORRUPT', /outside the file/],
    [73, Buffer.from('\n \n\n'), 'CORRUPT', /newline check/],
    [77, Buffer.from([9, 0]), 'UNSUPPORTED', /compressAlgorithm 9/],
  ];
  for (const [at, bytes, code, re] of patches) {
    const f = sparseCopy();
    writeAt(f, at, bytes);
    await assertRefused(f, code, re);
  }
  const short = sparseCopy();
  fs.truncateSync(short, 300);
  await assertRefused(short, 'BAD_HEADER', /truncated|too small/);
  const cut = sparseCopy();
  fs.truncateSync(cut, 4096);
  await assertRefused(cut, 'CORRUPT', /truncated|outside/);
});

/** The first grain directory entry's sector and the first grain table entry of a sparse file. */
function firstTable(file: string): { gdAt: number; gtAt: number } {
  const b = fs.readFileSync(file);
  const gd = Number(b.readBigUInt64LE(56));
  return { gdAt: gd * 512, gtAt: b.readUInt32LE(gd * 512) * 512 };
}

test('grain tables past the end of the file and grains outside the grain area are errors, and check reports them', async () => {
  const f = sparseCopy();
  const { gdAt } = firstTable(f);
  writeAt(f, gdAt, u32(0x7ffffff0));
  await assertRefused(f, 'CORRUPT', /grain directory entry 0 points to sector 2147483632/);
  const r = img('check', f);
  assert.equal(r.status, 2, r.stdout + r.stderr);
  assert.match(r.stderr, /grain directory entry 0 points to sector 2147483632, outside the file/);

  const g = sparseCopy();
  const { gtAt } = firstTable(g);
  writeAt(g, gtAt, u32(0x7ffffff0));
  await assertRefused(g, 'CORRUPT', /grain table entry of grain 0 points to sector 2147483632/);
  writeAt(g, gtAt, u32(3));
  await assertRefused(g, 'CORRUPT', /points to sector 3, outside the grain area/);
  const c = img('check', '--output=json', g);
  assert.equal(c.status, 2);
  assert.ok(JSON.parse(c.stdout).corruptions >= 1);
});

test('two grains sharing one host grain and a redundant table that differs: check reports, -r all repairs the copy', () => {
  const f = sparseCopy();
  const { gtAt } = firstTable(f);
  const b = fs.readFileSync(f);
  writeAt(f, gtAt + 4, b.subarray(gtAt, gtAt + 4)); // grain 1 -> grain 0's sector, in the primary table only
  const r = img('check', f);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /grain 1 points to sector \d+, which another grain uses too/);
  assert.match(r.stderr, /redundant grain table 0 .* differs/);
  const fix = img('check', '-r', 'all', '--output=json', f);
  const report = JSON.parse(fix.stdout);
  assert.equal(report['corruptions-fixed'], 1);
  assert.equal(report.corruptions, 1, 'the shared grain cannot be repaired without guessing');
});

test('lying grain markers in a stream: wrong LBA, absurd size, garbage zlib, missing footer', async () => {
  const make = () => {
    const f = fresh();
    const r = img('convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', SRC, f);
    assert.equal(r.status, 0, r.stderr);
    return f;
  };
  const grain0 = 128 * 512; // the first grain marker follows the 64 KiB preamble
  const lba = make();
  writeAt(lba, grain0, u64(4096n));
  await assertRefused(lba, 'CORRUPT', /says LBA 4096, but the grain table places it at LBA 0/);
  const size = make();
  writeAt(size, grain0 + 8, u32(0x7fffffff));
  await assertRefused(size, 'CORRUPT', /claims 2147483647 compressed bytes/);
  const garbage = make();
  writeAt(garbage, grain0 + 12, Buffer.alloc(64, 0x55));
  await assertRefused(garbage, 'CORRUPT', /does not decompress/);
  const c = img('check', garbage);
  assert.equal(c.status, 2);
  assert.match(c.stderr, /grain 0: .*does not decompress/);
  const cut = make();
  fs.truncateSync(cut, fs.statSync(cut).size - 512);
  await assertRefused(cut, 'CORRUPT', /footer/);
});

test('broken parent links: missing parent, parent changed since (CID), a delta naming itself', async () => {
  const base = sparseCopy();
  const top = fresh();
  qemuImg('create', '-q', '-f', 'vmdk', '-b', path.basename(base), '-F', 'vmdk', top);
  assert.equal(await openAndRead(top), null);
  qemuImg('convert', '-O', 'vmdk', SRC, base); // a new parent, with a new CID, under the same name
  await assertRefused(top, 'CORRUPT', /parentCID [0-9a-f]+ does not match the CID/);
  fs.rmSync(base);
  await assertRefused(top, 'NOT_FOUND', /backing file/);
  const loop = sparseCopy();
  const b = fs.readFileSync(loop);
  const desc = b.subarray(512, 512 * 21).toString('latin1').replace('createType="monolithicSparse"\n', `createType="monolithicSparse"\nparentFileNameHint="${path.basename(loop)}"`);
  writeAt(loop, 512, Buffer.from(desc.slice(0, 512 * 20), 'latin1'));
  await assertRefused(loop, 'CORRUPT', /loops/);
});

test('writes a stream cannot take: out of order, partial grains, a stream that already holds data', async () => {
  const f = fresh();
  assert.equal(img('create', '-q', '-f', 'vmdk', '-o', 'subformat=streamOptimized', f, '1M').status, 0);
  const image = await openImage(f);
  await image.write(128 * 1024, new Uint8Array(64 * 1024).fill(1));
  await assert.rejects(image.write(0, new Uint8Array(64 * 1024)), /one pass: grain 0 comes after grain 2/);
  await assert.rejects(image.write(512 * 1024, new Uint8Array(512)), /whole grains/);
  await assert.rejects(image.read(0, new Uint8Array(512)), /cannot be read until closed/);
  await image.close();
  await assert.rejects(openImage(f), /can only be opened read-only/);
  assert.equal(await openAndRead(f), null);
});

test('a convert that fails half way leaves neither the descriptor nor its extent files behind', () => {
  const src = fresh();
  assert.equal(img('convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', SRC, src).status, 0);
  writeAt(src, 128 * 512 + 12, Buffer.alloc(64, 0x55)); // the first grain no longer inflates
  const outDir = path.join(dir, `out${n++}`);
  fs.mkdirSync(outDir);
  for (const sub of ['twoGbMaxExtentSparse', 'monolithicFlat', 'streamOptimized']) {
    const r = img('convert', '-O', 'vmdk', '-o', `subformat=${sub}`, src, path.join(outDir, 'out.vmdk'));
    assert.equal(r.status, 1);
    assert.match(r.stderr, /does not decompress/);
    assert.deepEqual(fs.readdirSync(outDir), [], sub);
  }
});
