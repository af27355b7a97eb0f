/**
 * img serve against the NBD peers: nbdinfo, nbdcopy, qemu-img and qemu-io must all see the
 * image qemu-img sees in the file, and what they write must land in the qcow2 (qemu-img
 * check clean after the server exits).
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { qemuCheck, randomBytes, prng, run, tempDir } from '../helpers';
import { imgServe, mergeRuns, must, qemuNbd, Served } from './servers';

const MiB = 1 << 20;

/** base.qcow2 with data, top.qcow2 over it with data, a zero cluster over base data, and holes. */
function makeChain(dir: string): string {
  const base = path.join(dir, 'base.qcow2');
  const top = path.join(dir, 'top.qcow2');
  must('qemu-img', 'create', '-q', '-f', 'qcow2', base, '64M');
  must('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x11 0 4M', '-c', 'write -P 0x22 20M 1M', base);
  must('qemu-img', 'create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top);
  must('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x33 2M 1M', '-c', 'write -z 20M 64k', '-c', 'write -P 0x44 40M 3M', top);
  return top;
}

type Run = { start: number; length: number; value: string | number };

/** qemu-img map of the file, as base:allocation (data or zero) and as allocation depth. */
function qemuMaps(file: string): { allocation: Run[]; depth: Run[] } {
  const entries = JSON.parse(must('qemu-img', 'map', '--output=json', file)) as { start: number; length: number; depth: number; present: boolean; data: boolean; zero: boolean }[];
  return {
    allocation: mergeRuns(entries.map((e) => ({ start: e.start, length: e.length, value: e.data && !e.zero ? 'data' : 'zero' }))),
    depth: mergeRuns(entries.map((e) => ({ start: e.start, length: e.length, value: e.present ? e.depth + 1 : 0 }))),
  };
}

function nbdinfoMap(uri: string, context?: string): { offset: number; length: number; type: number }[] {
  return JSON.parse(must('nbdinfo', '--json', context ? `--map=${context}` : '--map', uri));
}

describe('img serve: readers agree with the image', () => {
  const dir = tempDir('img-nbd-');
  let top: string;
  let server: Served;
  let uri: string;

  before(async () => {
    top = makeChain(dir);
    server = await imgServe(['--socket', path.join(dir, 's.sock'), '--shared', '8', '--persistent', '--description', 'the top image', top]);
    uri = server.uris[0];
  });
  after(async () => {
    assert.equal(await server.stop('SIGTERM'), 0);
  });

  it('nbdinfo --json describes the export', () => {
    const info = JSON.parse(must('nbdinfo', '--json', uri));
    const e = info.exports[0];
    assert.equal(info.protocol, 'newstyle-fixed');
    assert.equal(info.structured, true);
    assert.equal(e['export-size'], 64 * MiB);
    assert.equal(e.description, 'the top image');
    assert.deepEqual([...e.contexts].sort(), ['base:allocation', 'qemu:allocation-depth']);
    for (const can of ['can_flush', 'can_fua', 'can_trim', 'can_zero', 'can_fast_zero', 'can_cache', 'can_df', 'can_multi_conn']) assert.equal(e[can], true, can);
    assert.equal(e.is_read_only, false);
    assert.equal(e.block_size_minimum, 1);
    assert.equal(e.block_size_preferred, 65536);
    assert.equal(e.block_size_maximum, 32 * MiB);
  });

  it('nbdinfo --can and --is answer as the flags say', () => {
    for (const what of ['flush', 'fua', 'trim', 'zero', 'fast-zero', 'cache', 'df', 'multi-conn', 'write', 'structured-reply']) {
      assert.equal(run('nbdinfo', ['--can', what, uri]).status, 0, what);
    }
    assert.equal(run('nbdinfo', ['--is', 'read-only', uri]).status, 2);
  });

  it('nbdinfo --map and --map=qemu:allocation-depth agree with qemu-img map of the file', () => {
    const want = qemuMaps(top);
    const allocation = mergeRuns(nbdinfoMap(uri).map((m) => ({ start: m.offset, length: m.length, value: m.type & 2 ? 'zero' : 'data' })));
    assert.deepEqual(allocation, want.allocation);
    const depth = mergeRuns(nbdinfoMap(uri, 'qemu:allocation-depth').map((m) => ({ start: m.offset, length: m.length, value: m.type })));
    assert.deepEqual(depth, want.depth);
  });

  for (const connections of ['1', '4']) {
    it(`nbdcopy with ${connections} connection(s) copies what qemu-img reads`, () => {
      const out = path.join(dir, `copy-${connections}.raw`);
      must('nbdcopy', '-C', connections, uri, out);
      assert.match(must('qemu-img', 'compare', '-f', 'raw', '-F', 'qcow2', out, top), /identical/);
    });
  }

  it('qemu-img info, map, compare and convert read the export', () => {
    const info = JSON.parse(must('qemu-img', 'info', '--output=json', uri));
    assert.equal(info['virtual-size'], 64 * MiB);
    const map = (JSON.parse(must('qemu-img', 'map', '--output=json', uri)) as { start: number; length: number; data: boolean; zero: boolean }[]).map((e) => ({
      start: e.start,
      length: e.length,
      value: e.data && !e.zero ? 'data' : 'zero',
    }));
    assert.deepEqual(mergeRuns(map), qemuMaps(top).allocation);
    assert.match(must('qemu-img', 'compare', uri, top), /identical/);
    const out = path.join(dir, 'from-nbd.qcow2');
    must('qemu-img', 'convert', '-O', 'qcow2', uri, out);
    assert.match(must('qemu-img', 'compare', out, top), /identical/);
  });
});

it('base:allocation of a qcow2 with preallocated metadata matches qemu-nbd (unwritten clusters read as zero)', async () => {
  const dir = tempDir('img-nbd-');
  const file = path.join(dir, 'prealloc.qcow2');
  must('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'preallocation=metadata', file, '32M');
  must('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x11 1M 3M', '-c', 'write -z 20M 2M', file);
  const ours = await imgServe(['--socket', path.join(dir, 's.sock'), '--read-only', '--persistent', file]);
  const theirs = await qemuNbd(dir, ['-r', '-t', '-f', 'qcow2', file]);
  try {
    const map = nbdinfoMap(ours.uris[0]);
    assert.deepEqual(map, nbdinfoMap(theirs.uri));
    assert.ok(map.some((m) => m.type === 2), 'some clusters are data that reads as zero');
  } finally {
    assert.equal(await ours.stop('SIGTERM'), 0);
    await theirs.stop();
  }
});

describe('img serve: writers land in the qcow2', () => {
  it('qemu-io patterns, write -z, discard and flush', async () => {
    const dir = tempDir('img-nbd-');
    const top = makeChain(dir);
    const server = await imgServe(['--socket', path.join(dir, 's.sock'), top]);
    const uri = server.uris[0];
    const io = must('qemu-io', '-f', 'raw', '-c', 'write -P 0x55 8M 1M', '-c', 'write -f -P 0x66 100k 5000', '-c', 'write -z 40M 64k', '-c', 'write -z 2M 4k', '-c', 'discard 48M 1M', '-c', 'flush', '-c', 'read -P 0x55 8M 1M', '-c', 'read -P 0 40M 64k', '-c', 'read -P 0x66 100k 5000', uri);
    assert.doesNotMatch(io, /Pattern verification failed|error/i);
    assert.equal(await server.exited, 0, 'without --persistent the server leaves with its last client');
    const check = must('qemu-io', '-f', 'qcow2', '-c', 'read -P 0x55 8M 1M', '-c', 'read -P 0 40M 64k', '-c', 'read -P 0 2M 4k', '-c', 'read -P 0x33 2052k 1020k', '-c', 'read -P 0x66 100k 5000', top);
    assert.doesNotMatch(check, /Pattern verification failed/);
    assert.equal(qemuCheck(top).status, 0);
  });

  it('nbdcopy with 4 connections and qemu-img convert write into the export', async () => {
    const dir = tempDir('img-nbd-');
    const target = path.join(dir, 'target.qcow2');
    must('qemu-img', 'create', '-q', '-f', 'qcow2', target, '64M');
    const src = path.join(dir, 'src.raw');
    fs.writeFileSync(src, Buffer.alloc(0));
    fs.truncateSync(src, 64 * MiB);
    const fd = fs.openSync(src, 'r+');
    const rand = prng(7);
    for (const at of [0, 5 * MiB, 17 * MiB + 4096, 50 * MiB]) fs.writeSync(fd, randomBytes(rand, 3 * MiB + 512), 0, 3 * MiB + 512, at);
    fs.closeSync(fd);
    const server = await imgServe(['--socket', path.join(dir, 's.sock'), '--shared', '4', '--persistent', target]);
    must('nbdcopy', '-C', '4', src, server.uris[0]);
    assert.match(must('qemu-img', 'compare', '-f', 'raw', src, server.uris[0]), /identical/);
    const other = path.join(dir, 'other.raw');
    must('qemu-img', 'create', '-q', '-f', 'raw', other, '64M');
    must('qemu-io', '-f', 'raw', '-c', 'write -P 0x77 1M 2M', other);
    must('qemu-img', 'convert', '-n', '-f', 'raw', '-O', 'raw', other, server.uris[0]);
    assert.equal(await server.stop('SIGINT'), 0);
    assert.match(must('qemu-img', 'compare', '-f', 'raw', other, target), /identical/);
    assert.equal(qemuCheck(target).status, 0);
  });

  it('keeps acknowledged FUA and flushed writes when the server is killed outright', async () => {
    const dir = tempDir('img-nbd-');
    const target = path.join(dir, 'target.qcow2');
    must('qemu-img', 'create', '-q', '-f', 'qcow2', target, '16M');
    const server = await imgServe(['--socket', path.join(dir, 's.sock'), '--persistent', target]);
    must('qemu-io', '-f', 'raw', '-c', 'write -f -P 0x21 1M 192k', '-c', 'write -P 0x22 5M 64k', '-c', 'flush', server.uris[0]);
    assert.equal(await server.stop('SIGKILL'), null);
    const check = qemuCheck(target);
    assert.ok(check.status === 0 || check.status === 3, `qemu-img check: ${JSON.stringify(check.report)}`);
    assert.doesNotMatch(must('qemu-io', '-f', 'qcow2', '-c', 'read -P 0x21 1M 192k', '-c', 'read -P 0x22 5M 64k', target), /verification failed/);
  });

  it('drains and flushes on SIGTERM while a client is writing', async () => {
    const dir = tempDir('img-nbd-');
    const target = path.join(dir, 'target.qcow2');
    must('qemu-img', 'create', '-q', '-f', 'qcow2', target, '256M');
    const server = await imgServe(['--socket', path.join(dir, 's.sock'), '--persistent', target]);
    const writer = run('sh', ['-c', `head -c 64M /dev/urandom | nbdcopy - '${server.uris[0]}' & sleep 0.3; kill -TERM ${server.proc.pid}; wait`]);
    assert.ok(writer.status === 0 || writer.stderr.length > 0);
    assert.equal(await server.exited, 0);
    assert.equal(qemuCheck(target).status, 0, 'the image is consistent after the shutdown');
  });
});

describe('img serve: exports', () => {
  it('serves several images as named exports, listed with their descriptions', async () => {
    const dir = tempDir('img-nbd-');
    const a = path.join(dir, 'a.qcow2');
    const b = path.join(dir, 'b.raw');
    must('qemu-img', 'create', '-q', '-f', 'qcow2', a, '8M');
    must('qemu-img', 'create', '-q', '-f', 'raw', b, '4M');
    must('qemu-io', '-f', 'raw', '-c', 'write -P 0x99 1M 1M', b);
    const server = await imgServe(['--socket', path.join(dir, 's.sock'), '--persistent', '-D', 'first', '-D', 'second', a, b], 2);
    try {
      const list = JSON.parse(must('nbdinfo', '--list', '--json', server.uris[0]));
      const byName = Object.fromEntries((list.exports as { 'export-name': string; description?: string; 'export-size': number }[]).map((e) => [e['export-name'], e]));
      assert.equal(byName['a.qcow2']['export-size'], 8 * MiB);
      assert.equal(byName['a.qcow2'].description, 'first');
      assert.equal(byName['b.raw'].description, 'second');
      assert.match(must('qemu-img', 'compare', '-f', 'raw', server.uris[1], b), /identical/);
      assert.notEqual(run('nbdinfo', [server.uris[0].replace('a.qcow2', 'nope')]).status, 0);
    } finally {
      assert.equal(await server.stop(), 0);
    }
  });

  it('serves an internal snapshot (-l) read-only', async () => {
    const dir = tempDir('img-nbd-');
    const file = path.join(dir, 'snap.qcow2');
    must('qemu-img', 'create', '-q', '-f', 'qcow2', file, '16M');
    must('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x12 0 2M', file);
    must('qemu-img', 'snapshot', '-c', 'before', file);
    must('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x34 1M 2M', file);
    const expected = path.join(dir, 'expected.raw');
    must('qemu-img', 'convert', '-l', 'before', '-O', 'raw', file, expected);
    const server = await imgServe(['--socket', path.join(dir, 's.sock'), '--persistent', '-l', 'before', file]);
    const info = JSON.parse(must('nbdinfo', '--json', server.uris[0]));
    assert.equal(info.exports[0].is_read_only, true);
    const out = path.join(dir, 'out.raw');
    must('nbdcopy', server.uris[0], out);
    assert.equal(await server.stop(), 0);
    assert.match(must('qemu-img', 'compare', '-f', 'raw', '-F', 'raw', out, expected), /identical/);
  });

  it('refuses writes to a read-only export with EPERM', async () => {
    const dir = tempDir('img-nbd-');
    const file = path.join(dir, 'ro.qcow2');
    must('qemu-img', 'create', '-q', '-f', 'qcow2', file, '4M');
    const server = await imgServe(['--socket', path.join(dir, 's.sock'), '--read-only', '--persistent', file]);
    try {
      assert.equal(run('nbdinfo', ['--is', 'read-only', server.uris[0]]).status, 0);
      const w = run('qemu-io', ['-f', 'raw', '-c', 'write 0 64k', server.uris[0]]);
      assert.match(w.stdout + w.stderr, /not permitted|read-only|Permission/i);
    } finally {
      assert.equal(await server.stop(), 0);
    }
    assert.equal(qemuCheck(file).status, 0);
  });
});
