/**
 * amendQcow2File on images qemu-img made: every result passes qemu-img check, qemu-img compare
 * finds it equal to the original, and qemu-img info shows the new settings. Refusals match
 * qemu-img amend's.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ImageError } from '../../../src/block/errors';
import { HostFile } from '../../../src/io/host-file';
import { amendQcow2File } from '../../../src/formats/qcow2/amend';
import { parseOptionList } from '../../../src/formats/options';
import { qemuImg, run, tempDir } from '../../helpers';
import { copy, guestHash, qemuCheckCounts, stripSnapshotExtraData } from './qcow2-fixture';

const dir = tempDir('img-amend-');
const MiB = 1 << 20;

async function amend(file: string, opts: string): Promise<void> {
  const f = await HostFile.open(file);
  try {
    await amendQcow2File(f, parseOptionList(opts));
  } finally {
    await f.close();
  }
}

function qemuIo(file: string, ...cmds: string[]): void {
  const r = run('qemu-io', ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), file]);
  assert.equal(r.status, 0, r.stderr);
}

function info(file: string): Record<string, unknown> {
  const j = JSON.parse(qemuImg('info', '--output=json', file)) as { 'format-specific': { data: Record<string, unknown> } } & Record<string, unknown>;
  return { ...j['format-specific'].data, 'backing-filename': j['backing-filename'], 'backing-filename-format': j['backing-filename-format'] };
}

function assertSound(file: string, original: string, what: string): void {
  const c = qemuCheckCounts(file);
  assert.equal(c.status, 0, `${what}: qemu-img check ${JSON.stringify(c.counts)}`);
  const cmp = run('qemu-img', ['compare', original, file]);
  assert.equal(cmp.status, 0, `${what}: qemu-img compare: ${cmp.stdout}${cmp.stderr}`);
}

/** Data, plain zero clusters, preallocated zero clusters and unallocated ranges. */
function sample(name: string, opts = 'cluster_size=65536', size = 16 * MiB, backing?: string): string {
  const file = path.join(dir, name);
  qemuImg('create', '-q', '-f', 'qcow2', '-o', opts, ...(backing ? ['-b', backing, '-F', 'raw'] : []), file, `${size}`);
  qemuIo(file, 'write -P 0x11 0 256k', 'write -z 64k 64k', 'write -z 1M 128k', 'write -P 3 3M 64k', 'write -z -u 3M 64k', 'write -P 4 9M 4k');
  return file;
}

test('compat 1.1 → 0.10 → 1.1 keeps the data; zero clusters are expanded', async () => {
  const file = sample('down.qcow2');
  const original = copy(file, 'down-orig.qcow2');
  await amend(file, 'compat=0.10');
  assert.equal(info(file).compat, '0.10');
  assertSound(file, original, 'downgraded');
  await amend(file, 'compat=1.1');
  assert.equal(info(file).compat, '1.1');
  assertSound(file, original, 'upgraded again');
});

test('downgrade over a backing file: plain zero clusters get clusters of zeroes', async () => {
  const base = path.join(dir, 'base.raw');
  fs.writeFileSync(base, Buffer.alloc(16 * MiB, 0x77));
  const file = sample('over.qcow2', 'cluster_size=4096', 16 * MiB, base);
  qemuIo(file, 'write -z 6M 20k');
  const original = copy(file, 'over-orig.qcow2');
  const before = guestHash(file);
  await amend(file, 'compat=0.10');
  assertSound(file, original, 'downgraded overlay');
  assert.equal(guestHash(file), before);
});

test('downgrade with snapshots sharing L2 tables keeps the snapshots intact', async () => {
  const file = sample('snaps.qcow2', 'cluster_size=4096');
  qemuImg('snapshot', '-c', 's1', file);
  qemuIo(file, 'write -z 0 8k', 'write -P 9 2M 4k');
  qemuImg('snapshot', '-c', 's2', file);
  const original = copy(file, 'snaps-orig.qcow2');
  await amend(file, 'compat=0.10');
  assertSound(file, original, 'downgraded with snapshots');
  for (const s of ['s1', 's2']) {
    const a = path.join(dir, `a-${s}.raw`);
    const b = path.join(dir, `b-${s}.raw`);
    qemuImg('convert', '-l', s, '-O', 'raw', original, a);
    qemuImg('convert', '-l', s, '-O', 'raw', file, b);
    assert.ok(fs.readFileSync(a).equals(fs.readFileSync(b)), `snapshot ${s}`);
  }
});

test('upgrade completes snapshot entries that lack extra data', async () => {
  const file = sample('oldsnap.qcow2', 'compat=0.10');
  qemuImg('snapshot', '-c', 'old', file);
  qemuIo(file, 'write -P 8 0 4k');
  stripSnapshotExtraData(file);
  const original = copy(file, 'oldsnap-orig.qcow2');
  await amend(file, 'compat=1.1');
  assertSound(file, original, 'upgraded with old snapshot entries');
  const a = path.join(dir, 'oldsnap-a.raw');
  const b = path.join(dir, 'oldsnap-b.raw');
  qemuImg('convert', '-l', 'old', '-O', 'raw', original, a);
  qemuImg('convert', '-l', 'old', '-O', 'raw', file, b);
  assert.ok(fs.readFileSync(a).equals(fs.readFileSync(b)));
});

test('refcount_bits: every width and back, with qemu-img check and compare', async () => {
  const file = sample('widths.qcow2');
  const original = copy(file, 'widths-orig.qcow2');
  for (const bits of [1, 2, 4, 8, 32, 64, 16]) {
    await amend(file, `refcount_bits=${bits}`);
    assert.equal(info(file)['refcount-bits'], bits);
    assertSound(file, original, `refcount_bits=${bits}`);
  }
});

test('refcount_bits too narrow for a shared cluster is refused with qemu-img\'s message', async () => {
  const file = sample('narrow.qcow2');
  qemuImg('snapshot', '-c', 's', file);
  const theirs = run('qemu-img', ['amend', '-o', 'refcount_bits=1', copy(file, 'narrow-q.qcow2')]);
  assert.notEqual(theirs.status, 0);
  await assert.rejects(amend(file, 'refcount_bits=1'), (e: unknown) => {
    assert.ok(e instanceof ImageError);
    assert.ok(theirs.stderr.includes(e.message.replace(`${file}: `, '')), `${e.message} vs ${theirs.stderr}`);
    return true;
  });
  assert.equal(qemuCheckCounts(file).status, 0);
});

test('lazy_refcounts on and off; v2 upgrade', async () => {
  const file = sample('lazy.qcow2');
  const original = copy(file, 'lazy-orig.qcow2');
  await amend(file, 'lazy_refcounts=on');
  assert.equal(info(file)['lazy-refcounts'], true);
  assertSound(file, original, 'lazy on');
  await amend(file, 'lazy_refcounts=off');
  assert.equal(info(file)['lazy-refcounts'], false);
  assertSound(file, original, 'lazy off');

  const v2 = sample('v2.qcow2', 'compat=0.10');
  const v2orig = copy(v2, 'v2-orig.qcow2');
  await assert.rejects(amend(v2, 'lazy_refcounts=on'), /Lazy refcounts only supported with compatibility level 1.1/);
  await assert.rejects(amend(v2, 'refcount_bits=8'), /Refcount widths other than 16 bits require compatibility level 1.1/);
  await amend(v2, 'compat=1.1,lazy_refcounts=on,refcount_bits=8');
  const i = info(v2);
  assert.deepEqual([i.compat, i['lazy-refcounts'], i['refcount-bits']], ['1.1', true, 8]);
  assertSound(v2, v2orig, 'upgraded v2');
});

test('a dirty lazy-refcounts image is repaired before it is amended', async () => {
  const file = sample('dirty.qcow2', 'lazy_refcounts=on');
  const original = copy(file, 'dirty-orig.qcow2');
  const fd = fs.openSync(file, 'r+');
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(1n); // incompatible_features: dirty
  fs.writeSync(fd, b, 0, 8, 72);
  fs.closeSync(fd);
  await amend(file, 'lazy_refcounts=off,compat=0.10');
  assertSound(file, original, 'cleaned and downgraded');
});

test('downgrade refusals match qemu-img amend', async () => {
  const cases: [string, string, RegExp][] = [
    ['extended_l2=on', '', /Cannot downgrade an image with incompatible features 0x10 set/],
    ['refcount_bits=8', '', /compat=0.10 requires refcount_bits=16/],
    // An absolute name: qemu-img create puts a relative data file in its working directory.
    [`data_file=${path.join(dir, 'ext.data')}`, '', /Cannot downgrade an image with a data file/],
    ['compression_type=zstd', 'c', /Cannot downgrade an image with zstd compression type and existing compressed clusters/],
  ];
  for (const [opts, compress, message] of cases) {
    const file = path.join(dir, 'refuse.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', '-o', opts, file, `${4 * MiB}`);
    if (compress) qemuIo(file, 'write -c -P 5 0 64k');
    const theirs = run('qemu-img', ['amend', '-o', 'compat=0.10', copy(file, 'refuse-q.qcow2')]);
    assert.match(theirs.stderr, message, opts);
    await assert.rejects(amend(file, 'compat=0.10'), message, opts);
    assert.equal(info(file).compat, '1.1');
  }
  const zstd = path.join(dir, 'zstd-empty.qcow2');
  qemuImg('create', '-q', '-f', 'qcow2', '-o', 'compression_type=zstd', zstd, `${4 * MiB}`);
  await amend(zstd, 'compat=0.10');
  assert.deepEqual([info(zstd).compat, qemuCheckCounts(zstd).status], ['0.10', 0]);
});

test('option errors as qemu-img words them', async () => {
  const file = sample('opts.qcow2');
  for (const [opts, message] of [
    ['cluster_size=4k', /Invalid parameter 'cluster_size'/],
    ['foo=1', /Invalid parameter 'foo'/],
    ['compat=0.9', /Unknown compatibility level 0.9/],
    ['refcount_bits=3', /Refcount width must be a power of two/],
    ['data_file=x', /data-file can only be set for images that use an external data file/],
  ] as const) {
    await assert.rejects(amend(file, opts), message, opts);
  }
});

test('backing_file and backing_fmt are set, changed and removed', async () => {
  const base = path.join(dir, 'b.raw');
  fs.writeFileSync(base, Buffer.alloc(4 * MiB, 0x42));
  const file = path.join(dir, 'backed.qcow2');
  qemuImg('create', '-q', '-f', 'qcow2', file, `${4 * MiB}`);
  await amend(file, `backing_file=${base},backing_fmt=raw`);
  assert.deepEqual([info(file)['backing-filename'], info(file)['backing-filename-format']], [base, 'raw']);
  assert.equal(run('qemu-img', ['compare', '-f', 'raw', base, file]).status, 0);
  await amend(file, 'backing_fmt=file');
  assert.equal(info(file)['backing-filename-format'], 'file');
  await amend(file, 'backing_file=');
  assert.deepEqual([info(file)['backing-filename'], qemuCheckCounts(file).status], [undefined, 0]);
});
