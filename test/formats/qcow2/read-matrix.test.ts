/**
 * Read matrix: images qemu-img and qemu-io write, with every qcow2 option, read back through
 * the library byte for byte (compared with `qemu-img convert -O raw` of the same image).
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as path from 'node:path';
import { openImage } from '../../../src/formats/index';
import { qemuImg, run, tempDir } from '../../helpers';
import { assertReadsLikeQemu as assertLikeQemu } from '../read-like-qemu';
import { makeRaw, MiB } from './fixtures';

const dir = tempDir('img-qcow2-read-');
const SRC = path.join(dir, 'src.raw');
makeRaw(SRC, 6 * MiB + 3 * 64 * 1024, 0x5eed);

let n = 0;
function name(): string {
  return path.join(dir, `i${n++}.qcow2`);
}

function qemuIo(file: string, ...cmds: string[]): void {
  const r = run('qemu-io', [...cmds.flatMap((c) => ['-c', c]), file]);
  assert.equal(r.status, 0, r.stderr);
}

function convert(opts: string, compress = false): string {
  const out = name();
  qemuImg('convert', '-f', 'raw', '-O', 'qcow2', ...(compress ? ['-c'] : []), ...(opts ? ['-o', opts] : []), SRC, out);
  return out;
}

/** img reads `file` as qemu-img does. */
const assertReadsLikeQemu = (file: string) => assertLikeQemu(file, 'qcow2');

const plain: string[] = [];
for (const compat of ['0.10', '1.1']) {
  for (const cs of ['512', '4k', '64k', '2M']) plain.push(`compat=${compat},cluster_size=${cs}`);
}
for (const bits of [1, 2, 4, 8, 32, 64]) plain.push(`refcount_bits=${bits},cluster_size=4k`);
plain.push('extended_l2=on,cluster_size=16k', 'extended_l2=on', 'extended_l2=on,cluster_size=2M', 'lazy_refcounts=on');

for (const opts of plain) {
  test(`reads qemu's qcow2 (${opts})`, async () => assertReadsLikeQemu(convert(opts)));
}

for (const opts of ['cluster_size=4k', '', 'cluster_size=2M', 'compression_type=zstd', 'compression_type=zstd,cluster_size=512', 'compat=0.10', 'extended_l2=on,compression_type=zstd']) {
  test(`reads qemu's compressed qcow2 (${opts || 'defaults'})`, async () => assertReadsLikeQemu(convert(opts, true)));
}

test('reads an external data file image (data_file, data_file_raw)', async () => {
  for (const raw of ['off', 'on']) {
    const out = name();
    qemuImg('convert', '-f', 'raw', '-O', 'qcow2', '-o', `data_file=${out}.data,data_file_raw=${raw}`, SRC, out);
    await assertReadsLikeQemu(out);
  }
});

test('reads zero clusters, discarded clusters and partial writes qemu-io made', async () => {
  for (const opts of ['compat=1.1', 'compat=0.10', 'extended_l2=on', 'cluster_size=4k,refcount_bits=1']) {
    const out = convert(opts);
    qemuIo(out, 'write -z 64k 192k', 'discard 1M 128k', 'write -P 0x5a 1000 5000', 'write -z -u 2M 64k', 'write -P 0x11 3M 4k');
    await assertReadsLikeQemu(out);
  }
});

test('reads backing chains: qcow2 over qcow2 over raw, v2 overlay, extended L2 overlay with subcluster writes', async () => {
  const base = convert('cluster_size=4k');
  const mid = name();
  qemuImg('create', '-f', 'qcow2', '-b', path.basename(base), '-F', 'qcow2', mid);
  qemuIo(mid, 'write -P 0x22 100k 300k', 'write -z 1M 64k', 'discard 2M 64k');
  const top = name();
  qemuImg('create', '-f', 'qcow2', '-o', 'compat=0.10,cluster_size=512', '-b', path.basename(mid), '-F', 'qcow2', top);
  qemuIo(top, 'write -P 0x33 99k 7k', 'write -P 0x44 5M 1k');
  await assertReadsLikeQemu(top);

  const ext = name();
  qemuImg('create', '-f', 'qcow2', '-o', 'extended_l2=on,cluster_size=64k', '-b', SRC, '-F', 'raw', ext);
  qemuIo(ext, 'write -P 0x55 4k 2k', 'write -P 0x66 70k 1', 'write -z 128k 8k', 'write -P 0x77 1M 64k');
  await assertReadsLikeQemu(ext);

  // The active layer reads the backing file's data for unallocated clusters: block status says so.
  const img = await openImage(ext, { readOnly: true });
  const ext0 = await img.blockStatus(0, 64 * 1024);
  assert.deepEqual(ext0.map((e) => [e.offset, e.length, e.depth]).slice(0, 2), [
    [0, 4096, 1],
    [4096, 2048, 0],
  ]);
  assert.equal(ext0[2].offset, 6144);
  assert.equal(ext0[2].depth, 1);
  await img.close();
});

test('reads the active layer of an image with internal snapshots', async () => {
  const out = convert('cluster_size=64k');
  qemuImg('snapshot', '-c', 'one', out);
  qemuIo(out, 'write -P 0x99 0 200k', 'write -z 1M 1M');
  qemuImg('snapshot', '-c', 'two', out);
  qemuIo(out, 'write -P 0x98 50k 10k');
  await assertReadsLikeQemu(out);
  const img = await openImage(out, { readOnly: true });
  const info = await img.info();
  assert.deepEqual(info.snapshots?.map((s) => s.name), ['one', 'two']);
  await img.close();
});

test('info matches qemu-img info for the format-specific fields', async () => {
  const out = convert('compression_type=zstd,lazy_refcounts=on,refcount_bits=8,extended_l2=on');
  const q = JSON.parse(qemuImg('info', '--output=json', out));
  const img = await openImage(out, { readOnly: true });
  const info = await img.info();
  await img.close();
  assert.equal(info.virtualSize, q['virtual-size']);
  assert.equal(info.clusterSize, q['cluster-size']);
  const kebab = Object.fromEntries(Object.entries(info.formatSpecific!.data).map(([k, v]) => [k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`), v]));
  assert.deepEqual(kebab, q['format-specific'].data);
});

test('block status agrees with qemu-img map (data, zero, unallocated, depth)', async () => {
  const base = convert('cluster_size=16k');
  qemuIo(base, 'write -z 0 64k', 'discard 1M 256k');
  const top = name();
  qemuImg('create', '-f', 'qcow2', '-o', 'extended_l2=on', '-b', path.basename(base), '-F', 'qcow2', top);
  qemuIo(top, 'write -P 1 8k 4k', 'write -z 200k 200k', 'write -c -P 2 2M 64k', 'write -P 3 3M 100k');
  const map: { start: number; length: number; depth: number; present: boolean; zero: boolean; data: boolean }[] = JSON.parse(
    qemuImg('map', '--output=json', top),
  );
  const img = await openImage(top, { readOnly: true });
  const ours = await img.blockStatus(0, img.size);
  await img.close();
  const kindAt = (off: number) => {
    const e = ours.find((x) => off >= x.offset && off < x.offset + x.length)!;
    return `${e.kind === 'data' ? 'data' : e.kind === 'zero' ? 'zero' : 'none'}@${e.depth}`;
  };
  const step = 2048;
  for (const m of map) {
    const want = `${m.data ? 'data' : m.present ? 'zero' : 'none'}@${m.depth}`;
    for (let off = m.start; off < m.start + m.length; off += step) {
      const got = kindAt(off);
      assert.equal(got, want, `offset ${off}: qemu ${JSON.stringify(m)}, img ${got}`);
    }
  }
});
