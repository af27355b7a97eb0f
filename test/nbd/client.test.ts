/**
 * img's NBD client: nbd:// and nbd+unix:// URIs as sources and targets of info, map, compare
 * and convert, against qemu-nbd (the peer server) and img serve; servers that break the
 * protocol fail with one clear line.
 */
import * as assert from 'node:assert/strict';
import * as net from 'node:net';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { openImage } from '../../src/formats/index';
import { IMG, img, qemuCheck, tempDir } from '../helpers';
import { imgServe, must, qemuNbd } from './servers';

const MiB = 1 << 20;

function makeChain(dir: string): string {
  const base = path.join(dir, 'base.qcow2');
  const top = path.join(dir, 'top.qcow2');
  must('qemu-img', 'create', '-q', '-f', 'qcow2', base, '32M');
  must('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x11 0 3M', '-c', 'write -P 0x22 10M 1M', base);
  must('qemu-img', 'create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top);
  must('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x33 1M 1M', '-c', 'write -z 10M 64k', '-c', 'write -P 0x44 20M 2M', top);
  return top;
}

describe('img as an NBD client of qemu-nbd', () => {
  it('info, map, compare and convert read an export', async () => {
    const dir = tempDir('img-nbd-client-');
    const top = makeChain(dir);
    const server = await qemuNbd(dir, ['-f', 'qcow2', '-r', '-t', '-e', '4', '-x', 'disk one', top]);
    try {
      const uri = server.uri.replace(':///', ':///disk%20one');
      const info = JSON.parse(must(process.execPath, IMG, 'info', '--output=json', uri));
      assert.equal(info['virtual-size'], 32 * MiB);
      assert.equal(info.format, 'raw');
      assert.equal(info['actual-size'], undefined);
      const ours = img('map', '--output=json', uri);
      assert.equal(ours.status, 0, ours.stderr);
      assert.deepEqual(JSON.parse(ours.stdout), JSON.parse(must('qemu-img', 'map', '--output=json', uri)));
      assert.equal(img('compare', uri, top).status, 0);
      const out = path.join(dir, 'out.qcow2');
      assert.equal(img('convert', '-O', 'qcow2', uri, out).status, 0);
      assert.match(must('qemu-img', 'compare', out, top), /identical/);
      must('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x99 5M 4k', out);
      const differ = img('compare', uri, out);
      assert.equal(differ.status, 1);
      assert.match(differ.stdout, /Content mismatch at offset 5242880/);
      const missing = img('info', server.uri.replace(':///', ':///nope'));
      assert.equal(missing.status, 1);
      assert.match(missing.stderr, /^img: .*no export named 'nope'/);
      const ro = img('convert', '-n', '-O', 'raw', top, uri);
      assert.equal(ro.status, 1);
      assert.match(ro.stderr, /read-only/);
    } finally {
      await server.stop();
    }
  });

  it('convert writes into an export, which qemu-img then finds equal and clean', async () => {
    const dir = tempDir('img-nbd-client-');
    const top = makeChain(dir);
    const target = path.join(dir, 'target.qcow2');
    must('qemu-img', 'create', '-q', '-f', 'qcow2', target, '32M');
    must('qemu-io', '-f', 'qcow2', '-c', 'write -P 0xee 0 32M', target); // stale data the copy must zero
    const server = await qemuNbd(dir, ['-f', 'qcow2', '-t', target]);
    const r = img('convert', '-O', 'raw', top, server.uri);
    assert.equal(r.status, 0, r.stderr);
    await server.stop();
    assert.match(must('qemu-img', 'compare', top, target), /identical/);
    assert.equal(qemuCheck(target).status, 0);
  });
});

describe('img as an NBD client of img serve', () => {
  it('copies a chain through TCP, reads in parallel and refuses formats over NBD', async () => {
    const dir = tempDir('img-nbd-client-');
    const top = makeChain(dir);
    const server = await imgServe(['--port', '0', '--persistent', '--read-only', top]);
    try {
      const uri = server.uris[0];
      assert.match(uri, /^nbd:\/\/127\.0\.0\.1:\d+\/$/);
      const out = path.join(dir, 'copy.qcow2');
      const r = img('convert', '-O', 'qcow2', uri, out);
      assert.equal(r.status, 0, r.stderr);
      assert.match(must('qemu-img', 'compare', out, top), /identical/);
      const bad = img('info', '-f', 'qcow2', uri);
      assert.equal(bad.status, 1);
      assert.match(bad.stderr, /raw device/);
      // Many reads in flight on one connection, larger than the maximum payload too.
      const dev = await openImage(uri, { readOnly: true });
      const local = await openImage(top, { readOnly: true });
      try {
        const pieces = Array.from({ length: 16 }, (_, i) => ({ at: i * 2 * MiB, buf: Buffer.alloc(2 * MiB), want: Buffer.alloc(2 * MiB) }));
        await Promise.all(pieces.flatMap((p) => [dev.read(p.at, p.buf), local.read(p.at, p.want)]));
        for (const p of pieces) assert.ok(p.buf.equals(p.want), `data at ${p.at}`);
        const big = Buffer.alloc(32 * MiB);
        const want = Buffer.alloc(32 * MiB);
        await Promise.all([dev.read(0, big), local.read(0, want)]);
        assert.ok(big.equals(want));
        await assert.rejects(dev.write(0, Buffer.alloc(512)), /read-only/);
      } finally {
        await dev.close();
        await local.close();
      }
    } finally {
      assert.equal(await server.stop(), 0);
    }
  });

  it('fails with one line when the server is not an NBD server or breaks the protocol', async () => {
    const garbage = net.createServer((s) => s.end(Buffer.alloc(64, 0x42)));
    const liar = net.createServer((s) => {
      // A valid greeting, then an option reply with an absurd length.
      const b = Buffer.alloc(18);
      b.write('NBDMAGICIHAVEOPT', 0, 'latin1');
      b.writeUInt16BE(3, 16);
      s.write(b);
      s.once('data', () => {
        const r = Buffer.alloc(20);
        r.writeBigUInt64BE(0x3e889045565a9n, 0);
        r.writeUInt32BE(8, 8);
        r.writeUInt32BE(1, 12);
        r.writeUInt32BE(0xffffffff, 16);
        s.write(r);
      });
      s.on('error', () => undefined);
    });
    const listen = (srv: net.Server) => new Promise<number>((r) => srv.listen(0, '127.0.0.1', () => r((srv.address() as net.AddressInfo).port)));
    const [gp, lp] = await Promise.all([listen(garbage), listen(liar)]);
    try {
      await assert.rejects(openImage(`nbd://127.0.0.1:${gp}/`), /not an NBD server/);
      await assert.rejects(openImage(`nbd://127.0.0.1:${lp}/`), /malformed reply to option 8/);
      await assert.rejects(openImage('nbd+unix:///x'), /names no socket/);
    } finally {
      garbage.close();
      liar.close();
    }
  });
});
