/**
 * VDI against qemu-img: img reads what qemu-img and qemu-io write byte for byte, and every
 * image img writes (both layouts, dynamic and static) passes `qemu-img check` and equals
 * its source under `qemu-img compare`.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ImageError } from '../../../src/block/errors';
import { createImage, openImage } from '../../../src/formats/index';
import { prng, qemuImg, randomBytes, run, tempDir } from '../../helpers';

const MiB = 1 << 20;
const dir = tempDir('img-vdi-interop-');
let n = 0;
const name = (ext = 'vdi') => path.join(dir, `i${n++}.${ext}`);

function qemuIo(file: string, ...cmds: string[]): void {
  const r = run('qemu-io', ['-f', 'vdi', ...cmds.flatMap((c) => ['-c', c]), file]);
  assert.equal(r.status, 0, r.stderr);
  assert.doesNotMatch(r.stdout, /error|fail/i);
}

async function readAll(file: string): Promise<Buffer> {
  const image = await openImage(file, { readOnly: true });
  try {
    assert.equal(image.format, 'vdi');
    const b = Buffer.alloc(image.size);
    await image.read(0, b);
    return b;
  } finally {
    await image.close();
  }
}

function qemuRaw(file: string): Buffer {
  const out = name('raw');
  qemuImg('convert', '-f', 'vdi', '-O', 'raw', file, out);
  return fs.readFileSync(out);
}

function assertQemuAccepts(file: string, mirror: Buffer): void {
  const c = run('qemu-img', ['check', '-f', 'vdi', file]);
  assert.equal(c.status, 0, `${file}: qemu-img check: ${c.stdout}${c.stderr}`);
  const raw = name('raw');
  fs.writeFileSync(raw, mirror);
  const cmp = run('qemu-img', ['compare', '-f', 'vdi', '-F', 'raw', file, raw]);
  assert.equal(cmp.status, 0, `${file}: qemu-img compare: ${cmp.stdout}${cmp.stderr}`);
}

for (const kind of ['dynamic', 'static']) {
  for (const size of [7 * MiB + 512, 3 * MiB]) {
    test(`img reads a ${kind} VDI of ${size} bytes written by qemu-io, byte for byte`, async () => {
      const file = name();
      qemuImg('create', '-f', 'vdi', ...(kind === 'static' ? ['-o', 'static=on'] : []), file, String(size));
      qemuIo(file, 'write -P 0x11 0 4k', 'write -P 0x22 1048000 200k', `write -P 0x33 ${size - 4096} 4096`, 'write -P 0x44 1536k 64k');
      const want = qemuRaw(file);
      const got = await readAll(file);
      assert.ok(got.equals(want));
      // Reads that start and end inside blocks.
      const image = await openImage(file, { readOnly: true });
      try {
        for (const [off, len] of [[1, 2 * MiB], [MiB - 5, 10], [size - 1000, 1000]]) {
          const b = Buffer.alloc(len);
          await image.read(off, b);
          assert.ok(b.equals(want.subarray(off, off + len)), `read at ${off}+${len}`);
        }
        const ext = await image.blockStatus(0, size);
        const at = (o: number) => ext.find((e) => e.offset <= o && o < e.offset + e.length)!;
        assert.equal(at(0).kind, 'data');
        // An unwritten block reads as zeroes; in a static image it is mapped (a hole in the file).
        if (size > 5 * MiB) {
          assert.equal(at(4 * MiB).kind, 'zero');
          assert.equal(at(4 * MiB).hostOffset !== undefined, kind === 'static');
        }
      } finally {
        await image.close();
      }
    });
  }
}

test('img creates the layout qemu-img creates, byte for byte but the UUIDs', async () => {
  for (const [opts, size] of [['', 5 * MiB], ['static=on', 3 * MiB + 512], ['', 0], ['', 200 * MiB]] as const) {
    const mine = name();
    const theirs = name();
    await createImage('vdi', mine, { size, options: opts ? { static: 'on' } : {} });
    qemuImg('create', '-f', 'vdi', ...(opts ? ['-o', opts] : []), theirs, String(size));
    const a = fs.readFileSync(mine);
    const b = fs.readFileSync(theirs);
    assert.equal(a.length, b.length, `${opts} ${size}: file size`);
    a.fill(0, 0x188, 0x1a8); // uuidCreate, uuidModify: fresh in each
    b.fill(0, 0x188, 0x1a8);
    assert.ok(a.equals(b), `${opts} ${size}: same bytes`);
  }
});

for (const layout of ['qemu', 'vbox']) {
  for (const isStatic of [false, true]) {
    test(`an image img writes (layout ${layout}, ${isStatic ? 'static' : 'dynamic'}) passes qemu-img check and compare`, async () => {
      const size = 9 * MiB + 3 * 512;
      const file = name();
      await createImage('vdi', file, { size, options: { layout, static: isStatic ? 'on' : 'off' } });
      const mirror = Buffer.alloc(size);
      const rand = prng(layout.length * 7 + (isStatic ? 1 : 0));
      const image = await openImage(file);
      try {
        assert.equal(image.size, size);
        const writes: Promise<void>[] = [];
        for (let i = 0; i < 40; i++) {
          const off = rand() % size;
          const len = Math.min(size - off, 1 + (rand() % (300 * 1024)));
          const data = randomBytes(rand, len);
          data.copy(mirror, off);
          // Several writes in flight, some into the same unallocated block.
          writes.push(image.write(off, data));
          if (i % 8 === 7) await Promise.all(writes.splice(0));
        }
        await Promise.all(writes);
        await image.write(size - 512, Buffer.alloc(512, 0x5a));
        mirror.fill(0x5a, size - 512);
        await image.writeZeroes(MiB + 100, 2 * MiB);
        mirror.fill(0, MiB + 100, 3 * MiB + 100);
        await image.discard(6 * MiB, MiB);
        mirror.fill(0, 6 * MiB, 7 * MiB);
        const r = await image.check!();
        assert.equal(r.corruptions + r.leaks, 0, r.messages.join('\n'));
      } finally {
        await image.close();
      }
      assertQemuAccepts(file, mirror);
      assert.ok((await readAll(file)).equals(mirror));
      // And qemu-io writing on top of what img wrote.
      qemuIo(file, 'write -P 0x77 8m 4k');
      mirror.fill(0x77, 8 * MiB, 8 * MiB + 4096);
      assert.ok((await readAll(file)).equals(mirror));
    });
  }
}

test('concurrent writes into one unallocated block allocate it once', async () => {
  const file = name();
  await createImage('vdi', file, { size: 4 * MiB, options: {} });
  const mirror = Buffer.alloc(4 * MiB);
  const image = await openImage(file);
  try {
    await Promise.all(
      Array.from({ length: 16 }, (_, i) => {
        const data = Buffer.alloc(4096, i + 1);
        data.copy(mirror, MiB + i * 8192);
        return image.write(MiB + i * 8192, data);
      }),
    );
    const info = await image.info();
    await image.flush();
    assert.equal(fs.statSync(file).size, (info.formatSpecific!.data as { offsetData: number }).offsetData + MiB);
  } finally {
    await image.close();
  }
  assertQemuAccepts(file, mirror);
});

test('create options: qemu-img create -f vdi -o help, and bad values refused', async () => {
  const r = run('qemu-img', ['create', '-f', 'vdi', '-o', 'help', 'x']);
  for (const opt of ['size', 'static', 'preallocation']) assert.match(r.stdout, new RegExp(`${opt}=`));
  const file = name();
  await createImage('vdi', file, { size: 2 * MiB, options: { preallocation: 'full', layout: 'vbox' } });
  assert.equal(fs.statSync(file).size, 4 * MiB);
  assert.ok(fs.statSync(file).blocks * 512 >= 2 * MiB, 'data area written');
  assertQemuAccepts(file, Buffer.alloc(2 * MiB));
  const bad: [Record<string, string>, RegExp, string?][] = [
    [{ layout: 'vmware' }, /invalid layout 'vmware'/],
    [{ cluster_size: '2M' }, /vdi does not support option 'cluster_size'/],
    [{ static: 'maybe' }, /expected on or off/],
    [{ size: '1P' }, /unsupported VDI image size/],
  ];
  for (const [options, msg] of bad) {
    await assert.rejects(createImage('vdi', name(), { size: MiB, options }), (e: unknown) => e instanceof ImageError && msg.test(e.message));
  }
  await assert.rejects(createImage('vdi', name(), { size: MiB, options: {}, backingFile: 'b.vdi', backingFormat: 'vdi' }), /cannot be created with a backing file/);
});

/**
 * VirtualBox's acceptance rules for a 1.1 header (VDI.cpp vdiValidatePreHeader and
 * vdiValidateHeader), read here independently of src/: VBoxManage is not available to test with.
 */
function vboxRejects(file: string): string[] {
  const h = fs.readFileSync(file).subarray(0, 512);
  const out: string[] = [];
  const u32 = (o: number) => h.readUInt32LE(o);
  const isNull = (o: number) => h.subarray(o, o + 16).every((b) => b === 0);
  const pow2 = (v: number) => v > 0 && (v & (v - 1)) === 0;
  const [cbHeader, type, flags, offBlocks, offData] = [u32(0x48), u32(0x4c), u32(0x50), u32(0x154), u32(0x158)];
  const [cbDisk, cbBlock, cBlocks, cAllocated] = [Number(h.readBigUInt64LE(0x170)), u32(0x178), u32(0x180), u32(0x184)];
  if (u32(0x40) !== 0xbeda107f || u32(0x44) >>> 16 !== 1) out.push('pre-header');
  if (cbHeader < 0x180) out.push('cbHeader');
  if (offBlocks < 0x48 + 0x180) out.push('offBlocks');
  if (offData < offBlocks + cBlocks * 4) out.push('offData');
  if (type < 1 || type > 4) out.push('type');
  if (flags & ~1) out.push('flags');
  if (cbHeader >= 0x190 && u32(0x1d4) !== 512) out.push('LCHS cbSector');
  if (cbDisk === 0 || !pow2(cbBlock) || cBlocks === 0) out.push('sizes');
  if (cAllocated > cBlocks) out.push('cBlocksAllocated');
  if (cbBlock * cBlocks < cbDisk) out.push('cbDisk');
  if (isNull(0x188)) out.push('uuidCreate');
  if (isNull(0x198)) out.push('uuidModify');
  // What VirtualBox itself writes: 1 MiB-aligned block map and data.
  if (offBlocks % MiB !== 0 || offData % MiB !== 0) out.push('alignment');
  return out;
}

test('layout=vbox images meet VirtualBox\'s header rules, before and after writes', async () => {
  for (const options of [{ layout: 'vbox' }, { layout: 'vbox', static: 'on' }] as Record<string, string>[]) {
    const file = name();
    await createImage('vdi', file, { size: 20 * MiB + 512, options });
    assert.deepEqual(vboxRejects(file), []);
    const image = await openImage(file);
    try {
      await image.write(19 * MiB, Buffer.alloc(MiB + 512, 7));
    } finally {
      await image.close();
    }
    assert.deepEqual(vboxRejects(file), []);
    assert.equal(fs.readFileSync(file).readUInt32LE(0x154), MiB);
  }
});
