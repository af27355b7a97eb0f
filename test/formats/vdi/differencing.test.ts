/**
 * Differencing VDIs (image type 4) built to VirtualBox's layout by vbox-fixture.ts: read
 * through their parent, found by UUID beside them or given explicitly; broken and ambiguous
 * parent links are clear errors; writes copy the parent's bytes into the child.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ImageError } from '../../../src/block/errors';
import { openImage } from '../../../src/formats/index';
import { img, qemuImg, run, sha256File, tempDir } from '../../helpers';
import { FREE, MiB, patternBlock, writeVboxImage, ZERO } from './vbox-fixture';

const PARENT_UUID = '6f1c2a3b-4d5e-4f60-8172-8394a5b6c7d8';
const PARENT_MODIFY = '0a1b2c3d-4e5f-4061-9273-84a5b6c7d8e9';
const CHILD_UUID = 'c0ffee00-1111-4222-8333-444455556666';
const SIZE = 5 * MiB;

/** A parent and a child in `dir`; returns what the child reads as. */
function makeChain(dir: string, parentName = 'parent.vdi', childName = 'child.vdi'): Buffer {
  writeVboxImage(path.join(dir, parentName), {
    type: 1,
    diskSize: SIZE,
    uuidCreate: PARENT_UUID,
    uuidModify: PARENT_MODIFY,
    blocks: [patternBlock(1), FREE, patternBlock(3), ZERO, patternBlock(5)],
  });
  writeVboxImage(path.join(dir, childName), {
    type: 4,
    diskSize: SIZE,
    uuidCreate: CHILD_UUID,
    uuidModify: 'c0ffee00-1111-4222-8333-777788889999',
    uuidLinkage: PARENT_UUID,
    uuidParentModify: PARENT_MODIFY,
    blocks: [patternBlock(10), FREE, ZERO, FREE, FREE],
  });
  return Buffer.concat([patternBlock(10), Buffer.alloc(MiB), Buffer.alloc(MiB), Buffer.alloc(MiB), patternBlock(5)]);
}

async function readAll(file: string, opts: Parameters<typeof openImage>[1] = {}): Promise<Buffer> {
  const image = await openImage(file, { readOnly: true, ...opts });
  try {
    const b = Buffer.alloc(image.size);
    await image.read(0, b);
    return b;
  } finally {
    await image.close();
  }
}

async function refusal(p: Promise<unknown>): Promise<ImageError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof ImageError, `expected an ImageError, got ${e}`);
    assert.ok(!e.message.includes('\n'), 'one line');
    return e;
  }
  assert.fail('expected a failure');
}

test('the VirtualBox-layout parent is a valid VDI for qemu-img and reads the same through img', async () => {
  const dir = tempDir('img-vdi-diff-');
  makeChain(dir);
  const parent = path.join(dir, 'parent.vdi');
  assert.equal(run('qemu-img', ['check', parent]).status, 0);
  const raw = path.join(dir, 'parent.raw');
  qemuImg('convert', '-f', 'vdi', '-O', 'raw', parent, raw);
  assert.ok((await readAll(parent)).equals(fs.readFileSync(raw)));
});

test('a differencing VDI reads through the parent found by UUID beside it', async () => {
  const dir = tempDir('img-vdi-diff-');
  const expected = makeChain(dir);
  const child = path.join(dir, 'child.vdi');
  assert.ok((await readAll(child)).equals(expected));
  // qemu-img refuses these images: img is the only reader here.
  assert.notEqual(run('qemu-img', ['info', child]).status, 0);

  const image = await openImage(child, { readOnly: true });
  try {
    assert.equal(image.backing?.filename, path.join(dir, 'parent.vdi'));
    const ext = await image.blockStatus(0, SIZE);
    const at = (o: number) => ext.find((e) => e.offset <= o && o < e.offset + e.length)!;
    assert.deepEqual([at(0).kind, at(0).depth], ['data', 0]);
    assert.deepEqual([at(2 * MiB).kind, at(2 * MiB).depth], ['zero', 0]);
    assert.deepEqual([at(3 * MiB).kind, at(3 * MiB).depth], ['zero', 1]);
    assert.deepEqual([at(4 * MiB).kind, at(4 * MiB).depth], ['data', 1]);
    const info = await image.info();
    assert.equal(info.backingFilename, 'parent.vdi');
    assert.equal((info.formatSpecific!.data as Record<string, unknown>).parentUuid, PARENT_UUID);
    assert.equal((info.formatSpecific!.data as Record<string, unknown>).imageType, 'differencing');
  } finally {
    await image.close();
  }

  // Through the CLI: info (the parent is named without opening the chain too), convert, compare.
  assert.match(img('info', child).stdout, /^backing file: parent\.vdi \(actual path: .*parent\.vdi\)\nbacking file format: vdi$/m);
  const r = img('info', '--backing-chain', '--output=json', child);
  assert.equal(r.status, 0, r.stderr);
  const chain = JSON.parse(r.stdout);
  assert.equal(chain.length, 2);
  assert.equal(chain[0]['backing-filename'], 'parent.vdi');
  const out = path.join(dir, 'flat.raw');
  assert.equal(img('convert', '-O', 'raw', child, out).status, 0);
  assert.ok(fs.readFileSync(out).equals(expected));
  assert.equal(img('compare', child, out).status, 0);
  const q = path.join(dir, 'flat.qcow2');
  assert.equal(img('convert', '-O', 'qcow2', child, q).status, 0);
  assert.equal(run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', q, out]).status, 0);
});

test('a chain of two differencing images reads through both', async () => {
  const dir = tempDir('img-vdi-diff-');
  const expected = makeChain(dir);
  writeVboxImage(path.join(dir, 'grandchild.vdi'), {
    type: 4,
    diskSize: SIZE,
    uuidCreate: 'aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee',
    uuidModify: 'aaaaaaaa-bbbb-4ccc-8ddd-ffffffffffff',
    uuidLinkage: CHILD_UUID,
    uuidParentModify: 'c0ffee00-1111-4222-8333-777788889999',
    blocks: [FREE, patternBlock(22)],
  });
  patternBlock(22).copy(expected, MiB);
  assert.ok((await readAll(path.join(dir, 'grandchild.vdi'))).equals(expected));
});

test('a missing parent is a clear error; without the chain the image still opens', async () => {
  const dir = tempDir('img-vdi-diff-');
  makeChain(dir);
  fs.rmSync(path.join(dir, 'parent.vdi'));
  fs.writeFileSync(path.join(dir, 'junk.vdi'), 'not a vdi');
  const child = path.join(dir, 'child.vdi');
  const e = await refusal(openImage(child, { readOnly: true }));
  assert.equal(e.code, 'NOT_FOUND');
  assert.match(e.message, new RegExp(`parent image with UUID ${PARENT_UUID} not found`));
  const r = img('info', child);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /parent uuid: 6f1c2a3b/);
  const r2 = img('convert', '-O', 'raw', child, path.join(dir, 'x.raw'));
  assert.equal(r2.status, 1);
  assert.match(r2.stderr, /^img: .*child\.vdi: parent image with UUID/);
});

test('two files with the parent UUID: the modification UUID decides, else an ambiguity error', async () => {
  const dir = tempDir('img-vdi-diff-');
  const expected = makeChain(dir);
  // A stale copy: same creation UUID, another modification UUID.
  writeVboxImage(path.join(dir, 'a-stale.vdi'), {
    type: 1,
    diskSize: SIZE,
    uuidCreate: PARENT_UUID,
    uuidModify: '99999999-9999-4999-8999-999999999999',
    blocks: [patternBlock(77)],
  });
  assert.ok((await readAll(path.join(dir, 'child.vdi'))).equals(expected));
  fs.copyFileSync(path.join(dir, 'parent.vdi'), path.join(dir, 'parent-copy.vdi'));
  const e = await refusal(openImage(path.join(dir, 'child.vdi'), { readOnly: true }));
  assert.match(e.message, /ambiguous: parent-copy\.vdi, parent\.vdi/);
});

test('the parent given explicitly, and a wrong one refused', async () => {
  const dir = tempDir('img-vdi-diff-');
  const expected = makeChain(dir);
  const elsewhere = tempDir('img-vdi-diff-other-');
  const child = path.join(elsewhere, 'child.vdi');
  fs.renameSync(path.join(dir, 'child.vdi'), child);
  assert.ok((await readAll(child, { backing: path.join(dir, 'parent.vdi') })).equals(expected));
  const other = path.join(elsewhere, 'other.vdi');
  qemuImg('create', '-f', 'vdi', other, '5M');
  const e = await refusal(openImage(child, { readOnly: true, backing: other }));
  assert.match(e.message, new RegExp(`is not the parent of this differencing image: it expects a VDI with UUID ${PARENT_UUID}`));
  const raw = path.join(elsewhere, 'r.raw');
  fs.writeFileSync(raw, Buffer.alloc(SIZE));
  const e2 = await refusal(openImage(child, { readOnly: true, backing: raw }));
  assert.match(e2.message, /not a raw image/);
});

test('writes to a differencing image copy the parent block first; the parent is untouched', async () => {
  const dir = tempDir('img-vdi-diff-');
  const expected = makeChain(dir);
  const parent = path.join(dir, 'parent.vdi');
  const parentHash = sha256File(parent);
  const child = path.join(dir, 'child.vdi');
  const image = await openImage(child);
  try {
    const data = Buffer.alloc(5000, 0xab);
    await image.write(4 * MiB + 1000, data); // partial write into a block the parent holds
    data.copy(expected, 4 * MiB + 1000);
    await image.writeZeroes(0, MiB); // an allocated block of the child
    expected.fill(0, 0, MiB);
    await image.write(MiB + 7, Buffer.from('hello'));
    Buffer.from('hello').copy(expected, MiB + 7);
    const r = await image.check!();
    assert.equal(r.corruptions + r.leaks, 0, r.messages.join('\n'));
  } finally {
    await image.close();
  }
  assert.ok((await readAll(child)).equals(expected));
  assert.equal(sha256File(parent), parentHash);
  // Zeroing a block the parent holds hides it behind a zero block.
  const again = await openImage(child);
  try {
    await again.writeZeroes(4 * MiB, MiB);
  } finally {
    await again.close();
  }
  expected.fill(0, 4 * MiB);
  assert.ok((await readAll(child)).equals(expected));
  assert.equal(img('check', child).status, 0);
});

test('differencing images naming each other are a loop, refused', async () => {
  const dir = tempDir('img-vdi-diff-');
  const a = { uuidCreate: 'aaaaaaaa-0000-4000-8000-000000000001', uuidModify: 'aaaaaaaa-0000-4000-8000-000000000002' };
  const b = { uuidCreate: 'bbbbbbbb-0000-4000-8000-000000000001', uuidModify: 'bbbbbbbb-0000-4000-8000-000000000002' };
  writeVboxImage(path.join(dir, 'a.vdi'), { type: 4, diskSize: MiB, ...a, uuidLinkage: b.uuidCreate, uuidParentModify: b.uuidModify, blocks: [] });
  writeVboxImage(path.join(dir, 'b.vdi'), { type: 4, diskSize: MiB, ...b, uuidLinkage: a.uuidCreate, uuidParentModify: a.uuidModify, blocks: [] });
  const e = await refusal(openImage(path.join(dir, 'a.vdi'), { readOnly: true }));
  assert.match(e.message, /backing chain loops: .*a\.vdi -> .*b\.vdi -> .*a\.vdi/);
});

test('makeEmpty drops the child\'s blocks: it reads as its parent again, and stays valid', async () => {
  const dir = tempDir('img-vdi-diff-');
  makeChain(dir);
  const child = path.join(dir, 'child.vdi');
  const image = await openImage(child);
  try {
    await image.makeEmpty!();
    const r = await image.check!();
    assert.equal(r.corruptions + r.leaks, 0, r.messages.join('\n'));
  } finally {
    await image.close();
  }
  assert.ok((await readAll(child)).equals(await readAll(path.join(dir, 'parent.vdi'))));
  assert.equal(fs.statSync(child).size, 2 * MiB, 'header and map only');
});

test('img commit merges a differencing VDI into its parent (VirtualBox\'s snapshot deletion), checked by qemu-img', () => {
  const dir = tempDir('img-vdi-diff-');
  const expected = makeChain(dir);
  const child = path.join(dir, 'child.vdi');
  const parent = path.join(dir, 'parent.vdi');
  const r = img('commit', child);
  assert.equal(r.status, 0, r.stderr);
  const raw = path.join(dir, 'expected.raw');
  fs.writeFileSync(raw, expected);
  assert.equal(run('qemu-img', ['check', parent]).status, 0);
  assert.equal(run('qemu-img', ['compare', '-F', 'raw', parent, raw]).status, 0, 'the parent now holds what the child showed');
  assert.equal(img('compare', child, raw).status, 0, 'the emptied child reads through to it');
  assert.equal(img('check', child).status, 0);
});
