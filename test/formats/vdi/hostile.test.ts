/**
 * Hostile and broken VDIs: lying headers are refused with one line naming the field; a
 * broken block map (entries out of range, past the end of the file, shared) opens, fails
 * reads of the blocks concerned with a clear error, is reported exactly by check, and is
 * repaired where that is safe, after which qemu-img check is clean and the data is kept.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ImageError } from '../../../src/block/errors';
import { openImage } from '../../../src/formats/index';
import { img, prng, qemuImg, run, tempDir } from '../../helpers';
import { MiB, patternBlock } from './vbox-fixture';

const dir = tempDir('img-vdi-hostile-');
let n = 0;
/** qemu's layout: block map at 0x200, data at 0x400. */
const MAP = 0x200;
const DATA = 0x400;

/** A 4 MiB dynamic VDI by qemu-img with data blocks 0..3 = virtual blocks 0..3. */
function image(): { file: string; raw: Buffer } {
  const raw = Buffer.concat([0, 1, 2, 3].map((i) => patternBlock(i)));
  const src = path.join(dir, `s${n}.raw`);
  fs.writeFileSync(src, raw);
  const file = path.join(dir, `h${n++}.vdi`);
  qemuImg('convert', '-f', 'raw', '-O', 'vdi', src, file);
  return { file, raw };
}

function patch32(file: string, offset: number, value: number): void {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(value >>> 0);
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, b, 0, 4, offset);
  fs.closeSync(fd);
}

async function refused(file: string, field: RegExp, code?: string): Promise<void> {
  let err: unknown;
  try {
    const im = await openImage(file, { format: 'vdi', readOnly: true });
    await im.close();
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof ImageError, `${file}: expected an ImageError, got ${err}`);
  assert.ok(!err.message.includes('\n'));
  assert.match(err.message, field);
  if (code) assert.equal(err.code, code);
  const r = img('info', '-f', 'vdi', file);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /^img: /);
  assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
}

test('lying headers are refused with the field and value named', async () => {
  const cases: [number, number, RegExp, string?][] = [
    [0x40, 0x12345678, /invalid signature 0x12345678/],
    [0x44, 0x00010002, /unsupported VDI version 1\.2/, 'UNSUPPORTED'],
    [0x48, 0x10, /invalid cbHeader 16/],
    [0x4c, 9, /invalid u32Type 9/],
    [0x4c, 3, /undo images/, 'UNSUPPORTED'],
    [0x4c, 4, /invalid uuidLinkage .*must name its parent/],
    [0x168, 4096, /sector size 4096/, 'UNSUPPORTED'],
    [0x178, 3 * MiB, /invalid cbBlock 3145728/],
    [0x178, 0, /invalid cbBlock 0/],
    [0x178, 1 << 30, /invalid cbBlock 1073741824/],
    [0x17c, 512, /cbBlockExtra 512/, 'UNSUPPORTED'],
    [0x180, 0x40000000, /invalid cBlocks 1073741824: more than/],
    [0x180, 0xffffff, /invalid cBlocks 16777215: the block map .* past the end of the file/],
    [0x180, 2, /invalid cbDisk 4194304: larger than the 2 blocks/],
    [0x154, 0x201, /invalid offBlocks 513/],
    [0x154, 0, /invalid offBlocks 0/],
    [0x158, 0x300, /invalid offData 768: must be sector-aligned and after the block map/],
    [0x158, 0x401, /invalid offData 1025/],
  ];
  for (const [offset, value, msg, code] of cases) {
    const { file } = image();
    patch32(file, offset, value);
    await refused(file, msg, code);
  }
  // A 64-bit disk size beyond 2^53, a truncated header, an empty file.
  const { file } = image();
  patch32(file, 0x174, 0x7fffffff);
  await refused(file, /cbDisk .*absurd/);
  const short = path.join(dir, 'short.vdi');
  fs.writeFileSync(short, fs.readFileSync(file).subarray(0, 300));
  await refused(short, /too short \(300 bytes\)/);
  const empty = path.join(dir, 'empty.vdi');
  fs.writeFileSync(empty, '');
  await refused(empty, /too short \(0 bytes\)/);
});

/** Reading block `block` fails with CORRUPT naming the entry; the other blocks read fine. */
async function assertBlockRefused(file: string, block: number, good: number, msg: RegExp): Promise<void> {
  const im = await openImage(file, { readOnly: true });
  try {
    await assert.rejects(im.read(block * MiB, Buffer.alloc(512)), (e: unknown) => e instanceof ImageError && e.code === 'CORRUPT' && msg.test(e.message));
    await im.read(good * MiB, Buffer.alloc(MiB));
  } finally {
    await im.close();
  }
  // Writing to a broken block is refused too.
  const rw = await openImage(file);
  try {
    await assert.rejects(rw.write(block * MiB, Buffer.alloc(512)), /CORRUPT|points to data block/);
  } finally {
    await rw.close();
  }
}

function imgCheck(file: string, ...extra: string[]): { status: number; json: Record<string, number>; stderr: string } {
  const r = img('check', '--output=json', ...extra, file);
  return { status: r.status, json: JSON.parse(r.stdout || '{}'), stderr: r.stderr };
}

async function readAll(file: string): Promise<Buffer> {
  const im = await openImage(file, { readOnly: true });
  try {
    const b = Buffer.alloc(im.size);
    await im.read(0, b);
    return b;
  } finally {
    await im.close();
  }
}

test('two entries on one data block: read refused, reported, repaired by copying', async () => {
  const { file, raw } = image();
  patch32(file, MAP + 2 * 4, 1); // block 2 now shares data block 1 with block 1
  await assertBlockRefused(file, 2, 1, /block map entry 2 points to data block 1, which entry 1 uses too/);
  const q = run('qemu-img', ['check', file]);
  assert.equal(q.status, 2);
  assert.match(q.stderr, /also used by/);
  const c = imgCheck(file);
  assert.equal(c.status, 2);
  assert.equal(c.json.corruptions, 1);
  assert.equal(c.json.leaks, 1);
  assert.match(c.stderr, /ERROR: block map entry 2 points to data block 1, which entry 1 uses too/);
  assert.match(c.stderr, /Leaked data block 2: no block map entry uses it/);
  const r = img('check', '-r', 'all', file);
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /1 leaked clusters\n {4}1 corruptions/);
  assert.equal(run('qemu-img', ['check', file]).status, 0);
  const expected = Buffer.concat([raw.subarray(0, 2 * MiB), raw.subarray(MiB, 2 * MiB), raw.subarray(3 * MiB)]);
  assert.ok((await readAll(file)).equals(expected));
  assert.equal(fs.statSync(file).size, DATA + 4 * MiB, 'compacted back to four data blocks');
});

test('an entry past the range of the map and past the end of the file: refused, repaired to a zero block', async () => {
  const { file, raw } = image();
  patch32(file, MAP + 1 * 4, 100);
  await assertBlockRefused(file, 1, 0, /block map entry 1 points to data block 100, past the 4 blocks of the image/);
  const c = imgCheck(file);
  assert.equal(c.status, 2);
  // The entry, the count (3 in range, 4 in the header) and data block 1 left unused.
  assert.deepEqual([c.json.corruptions, c.json.leaks], [2, 1]);
  assert.match(c.stderr, /allocated blocks mismatch: cBlocksAllocated is 4, the block map uses 3/);
  assert.equal(img('check', '-r', 'all', file).status, 0);
  assert.equal(run('qemu-img', ['check', file]).status, 0);
  const expected = Buffer.from(raw);
  expected.fill(0, MiB, 2 * MiB); // what qemu read there: zeroes past the end of the file
  assert.ok((await readAll(file)).equals(expected));
});

test('an out-of-range entry inside the file is reported and left alone', async () => {
  const { file } = image();
  fs.appendFileSync(file, patternBlock(9));
  patch32(file, MAP + 0 * 4, 4);
  const c = imgCheck(file, '-r', 'all');
  assert.equal(c.status, 2);
  assert.match(c.stderr, /block map entry 0 points to data block 4, past the 4 blocks/);
  const q = run('qemu-img', ['check', file]);
  assert.equal(q.status, 2);
  assert.match(q.stderr, /too large/);
});

test('a data block cut off by truncation: refused, repaired by extending the file', async () => {
  const { file, raw } = image();
  fs.truncateSync(file, DATA + 3 * MiB + 1000);
  await assertBlockRefused(file, 3, 2, new RegExp(`block map entry 3 points to data block 3 at offset ${DATA + 3 * MiB}, past the end of the file \\(${DATA + 3 * MiB + 1000} bytes\\)`));
  const c = imgCheck(file);
  assert.deepEqual([c.status, c.json.corruptions], [2, 1]);
  assert.equal(img('check', '-r', 'all', file).status, 0);
  assert.equal(run('qemu-img', ['check', file]).status, 0);
  const expected = Buffer.from(raw);
  expected.fill(0, 3 * MiB + 1000 - DATA + DATA);
  assert.ok((await readAll(file)).equals(expected));
});

test('cBlocksAllocated lying: reported as qemu does, repaired', async () => {
  const { file, raw } = image();
  patch32(file, 0x184, 7);
  assert.equal(run('qemu-img', ['check', file]).status, 2);
  const c = imgCheck(file);
  assert.deepEqual([c.status, c.json.corruptions], [2, 1]);
  const r = imgCheck(file, '-r', 'all');
  assert.equal(r.status, 0);
  assert.equal(r.json['corruptions-fixed'], 1);
  assert.equal(run('qemu-img', ['check', file]).status, 0);
  assert.ok((await readAll(file)).equals(raw));
});

test('a data area with holes (leaks) is compacted by check -r leaks, so appending writers stay safe', async () => {
  const { file, raw } = image();
  // Blocks 1 and 2 free, block 3 still at data block 3: two leaked data blocks, count 2.
  patch32(file, MAP + 4, 0xffffffff);
  patch32(file, MAP + 8, 0xffffffff);
  patch32(file, 0x184, 2);
  assert.equal(run('qemu-img', ['check', file]).status, 0, 'qemu sees nothing wrong');
  const c = imgCheck(file);
  assert.deepEqual([c.status, c.json.leaks], [3, 2]);
  const r = imgCheck(file, '-r', 'leaks');
  assert.deepEqual([r.status, r.json['leaks-fixed']], [0, 2]);
  assert.equal(fs.statSync(file).size, DATA + 2 * MiB);
  const expected = Buffer.from(raw);
  expected.fill(0, MiB, 3 * MiB);
  assert.ok((await readAll(file)).equals(expected));
  // qemu now appends at data block 2 without touching block 3's data.
  assert.equal(run('qemu-io', ['-f', 'vdi', '-c', 'write -P 0x66 1m 4k', file]).status, 0);
  expected.fill(0x66, MiB, MiB + 4096);
  assert.ok((await readAll(file)).equals(expected));
  assert.equal(run('qemu-img', ['check', file]).status, 0);
});

test('random damage to the header and block map gives ImageErrors, never another exception', async () => {
  const { file } = image();
  const pristine = fs.readFileSync(file);
  const rand = prng(0xbad);
  const fuzzed = path.join(dir, 'fuzz.vdi');
  for (let i = 0; i < 300; i++) {
    const b = Buffer.from(pristine);
    for (let k = 0; k < 1 + (rand() % 4); k++) {
      const at = 0x40 + (rand() % (DATA - 0x40)); // signature onwards, header and map
      b[at] = rand() & 0xff;
    }
    fs.writeFileSync(fuzzed, b);
    try {
      const im = await openImage(fuzzed, { format: 'vdi', readOnly: true });
      try {
        await im.blockStatus(0, im.size);
        for (let off = 0; off < Math.min(im.size, 8 * MiB); off += MiB) {
          await im.read(off, Buffer.alloc(Math.min(MiB, im.size - off))).catch((e) => {
            if (!(e instanceof ImageError)) throw e;
          });
        }
        await im.check!();
      } finally {
        await im.close();
      }
    } catch (e) {
      assert.ok(e instanceof ImageError, `case ${i}: ${(e as Error).stack}`);
    }
  }
});

test('a sparse file whose block map holds millions of shared entries: bounded work, capped report', async () => {
  const file = path.join(dir, 'million.vdi');
  const { file: base } = image();
  const head = fs.readFileSync(base).subarray(0, 512);
  const blocks = 1 << 24;
  head.writeUInt32LE(blocks, 0x180); // cBlocks
  head.writeBigUInt64LE(BigInt(blocks) * BigInt(MiB), 0x170); // cbDisk: 16 TiB
  head.writeUInt32LE(MAP + blocks * 4, 0x158); // offData right after the map
  fs.writeFileSync(file, head);
  fs.truncateSync(file, MAP + blocks * 4); // the map reads as zeroes: every entry is data block 0
  const im = await openImage(file, { readOnly: true });
  try {
    assert.equal(im.size, blocks * MiB);
    await assert.rejects(im.read(5 * MiB, Buffer.alloc(512)), /block map entry 5 points to data block 0, which entry 0 uses too/);
    const r = await im.check!();
    assert.equal(r.corruptions, 2 * blocks - 1 + 1); // shared and past the end, block 0 past the end, the count
    assert.ok(r.messages.length <= 1003, `${r.messages.length} lines`);
    assert.match(r.messages.join('\n'), /and \d+ more block map entries like these/);
  } finally {
    await im.close();
  }
  // Repair: every block read as zeroes and becomes a zero block; the file does not grow.
  const c = imgCheck(file, '-r', 'all');
  assert.equal(c.status, 0, c.stderr.slice(0, 500));
  assert.equal(fs.statSync(file).size, MAP + blocks * 4);
  assert.equal(run('qemu-img', ['check', file]).status, 0);
});
