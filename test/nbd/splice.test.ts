/**
 * Read replies sent with splice (src/nbd/sink.ts, native/splice_writer.cc): file ranges go
 * from the page cache to the socket, the rest (compressed clusters, zeroes) as buffers. Every
 * reply kind must carry the bytes qemu-img reads, the same as the copy path (IMG_NBD_SPLICE=0),
 * with slow clients, dying clients and an image that points past its own end.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { be32, be64 } from '../../src/io/bytes';
import * as P from '../../src/nbd/protocol';
import { qemuImg, tempDir } from '../helpers';
import { RawPeer } from './raw-peer';
import { imgServe, must, Served } from './servers';

const KiB = 1024;
const MiB = 1 << 20;
const SIZE = 8 * MiB;

/** A peer in transmission with structured replies, or simple ones (as the kernel client). */
async function peer(sock: string, structured: boolean): Promise<RawPeer> {
  const p = await RawPeer.connect(sock);
  await p.greet();
  if (structured) assert.equal((await p.option(P.NBD_OPT_STRUCTURED_REPLY))[0].type, P.NBD_REP_ACK);
  assert.equal(await p.go(''), P.NBD_REP_ACK);
  return p;
}

/** A structured READ reply put back together: the bytes, and the chunk types in order. */
async function structuredRead(p: RawPeer, cookie: bigint, offset: number, length: number, flags = 0): Promise<{ data: Buffer; chunks: number[] }> {
  p.request(P.NBD_CMD_READ, cookie, offset, length, flags);
  const data = Buffer.alloc(length, 0xa5);
  const chunks: number[] = [];
  for (;;) {
    const r = await p.anyReply();
    assert.equal(r.cookie, cookie);
    assert.equal(r.error, 0);
    chunks.push(r.type!);
    if (r.type === P.NBD_REPLY_TYPE_OFFSET_DATA) r.data!.copy(data, be64(r.data!, 0) - offset, 8);
    if (r.type === P.NBD_REPLY_TYPE_OFFSET_HOLE) data.fill(0, be64(r.data!, 0) - offset, be64(r.data!, 0) - offset + be32(r.data!, 8));
    if (r.flags! & P.NBD_REPLY_FLAG_DONE) return { data, chunks };
  }
}

/** The server's open descriptors and threads, from /proc. */
function resources(pid: number): { fds: number; threads: number } {
  return { fds: fs.readdirSync(`/proc/${pid}/fd`).length, threads: fs.readdirSync(`/proc/${pid}/task`).length };
}

describe('img serve: read replies by splice', () => {
  const dir = tempDir('img-nbd-splice-');
  const base = path.join(dir, 'base.qcow2');
  const top = path.join(dir, 'top.qcow2');
  const sock = path.join(dir, 's.sock');
  const copySock = path.join(dir, 'copy.sock');
  let expected: Buffer;
  let server: Served;
  let copyServer: Served;

  before(async () => {
    // Base data under the overlay; in the overlay plain, compressed and zero clusters.
    qemuImg('create', '-q', '-f', 'qcow2', base, String(SIZE));
    must('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x11 0 3M', '-c', 'write -P 0x12 5M 1M', base);
    qemuImg('create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top);
    must('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x21 64k 200k', '-c', 'write -c -P 0x22 1M 128k', '-c', 'write -z 2M 256k', '-c', 'write -P 0x23 7M 100k', top);
    const raw = path.join(dir, 'expected.raw');
    qemuImg('convert', '-f', 'qcow2', '-O', 'raw', top, raw);
    expected = fs.readFileSync(raw);
    server = await imgServe(['--socket', sock, '-r', '--persistent', '--shared', '0', top]);
    copyServer = await imgServe(['--socket', copySock, '-r', '--persistent', '--shared', '0', top], 1, { IMG_NBD_SPLICE: '0' });
  });
  after(async () => {
    assert.equal(await server.stop(), 0);
    assert.equal(await copyServer.stop(), 0);
  });

  it('nbdcopy with 1 and 4 connections and qemu-img compare read what qemu-img converts', () => {
    for (const c of ['1', '4']) {
      const out = path.join(dir, `out-${c}.raw`);
      must('nbdcopy', '-C', c, server.uris[0], out);
      assert.ok(fs.readFileSync(out).equals(expected), `nbdcopy -C ${c}`);
    }
    must('qemu-img', 'compare', '-f', 'qcow2', top, server.uris[0]);
  });

  it('structured replies with holes, with DF, and simple replies carry the same bytes as the copy path', async () => {
    for (const s of [sock, copySock]) {
      const p = await peer(s, true);
      const whole = await structuredRead(p, 1n, 0, SIZE);
      assert.ok(whole.data.equals(expected), `${s}: structured`);
      assert.ok(whole.chunks.includes(P.NBD_REPLY_TYPE_OFFSET_HOLE), 'unallocated ranges go out as holes');
      const df = await structuredRead(p, 2n, 1 * MiB - 4 * KiB, 2 * MiB, P.NBD_CMD_FLAG_DF);
      assert.deepEqual(df.chunks, [P.NBD_REPLY_TYPE_OFFSET_DATA], 'DF: one data chunk');
      assert.ok(df.data.equals(expected.subarray(MiB - 4 * KiB, 3 * MiB - 4 * KiB)), `${s}: DF`);
      p.close();
      const q = await peer(s, false);
      q.request(P.NBD_CMD_READ, 3n, 0, SIZE);
      const r = await q.simpleReply(SIZE);
      assert.equal(r.error, 0);
      assert.ok(r.data!.equals(expected), `${s}: simple`);
      q.close();
    }
  });

  it('serves a slow reader whole and leaves no thread or descriptor behind clients that die mid-reply', async () => {
    const pid = server.proc.pid!;
    const idle = resources(pid);
    // Eight 8 MiB replies queued at once, read a little at a time: the writer waits for room.
    // Replies may come in any order (the cookies say which is which); each must be whole.
    const slow = await peer(sock, false);
    for (let i = 0; i < 8; i++) slow.request(P.NBD_CMD_READ, BigInt(i), 0, SIZE);
    const cookies: bigint[] = [];
    for (let i = 0; i < 8; i++) {
      await new Promise((r) => setTimeout(r, 20));
      const r = await slow.simpleReply(SIZE);
      cookies.push(r.cookie);
      assert.ok(r.data!.equals(expected));
    }
    assert.deepEqual(cookies.sort((a, b) => (a < b ? -1 : 1)), [0n, 1n, 2n, 3n, 4n, 5n, 6n, 7n]);
    slow.close();
    for (let i = 0; i < 20; i++) {
      const p = await peer(sock, i % 2 === 0);
      for (let k = 0; k < 4; k++) p.request(P.NBD_CMD_READ, BigInt(k), 0, SIZE);
      await p.read(100); // part of the first reply, then the client vanishes
      p.close();
    }
    const check = await peer(sock, true);
    assert.ok((await structuredRead(check, 9n, 0, SIZE)).data.equals(expected), 'still serving');
    check.close();
    let now = resources(pid);
    for (let i = 0; i < 100 && (now.fds > idle.fds || now.threads > idle.threads); i++) {
      await new Promise((r) => setTimeout(r, 50));
      now = resources(pid);
    }
    assert.deepEqual(now, idle);
  });

  it('reads a qcow2 whose mapping points past the end of its file as the copy path does: zeroes', async () => {
    const cut = path.join(dir, 'cut.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', cut, '1M');
    must('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x31 0 64k', '-c', 'write -P 0x32 64k 64k', cut);
    fs.truncateSync(cut, fs.statSync(cut).size - 32 * KiB); // half of the last data cluster is gone
    const results: Buffer[] = [];
    for (const env of [{}, { IMG_NBD_SPLICE: '0' }]) {
      const s = path.join(dir, 'cut.sock');
      const served = await imgServe(['--socket', s, '-r', cut], 1, env);
      const p = await peer(s, true);
      results.push((await structuredRead(p, 1n, 0, 256 * KiB)).data);
      p.close();
      assert.equal(await served.exited, 0);
    }
    assert.ok(results[0].equals(results[1]));
    assert.ok(results[0].subarray(0, 64 * KiB).every((b) => b === 0x31));
    assert.ok(results[0].subarray(64 * KiB, 96 * KiB).every((b) => b === 0x32));
    assert.ok(results[0].subarray(96 * KiB).every((b) => b === 0));
  });
});
