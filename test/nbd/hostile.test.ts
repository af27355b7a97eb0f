/**
 * Hostile and broken clients on raw sockets: malformed handshakes, bad magic, truncated
 * requests, 4 GiB lengths, unknown commands and flags, and a thousand sessions opened and
 * dropped. The server answers with the spec's errors, keeps serving others, and its memory
 * stays flat. The simple-reply path (clients without structured replies) is exercised here.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { be32, be64, setBe32 } from '../../src/io/bytes';
import * as P from '../../src/nbd/protocol';
import { prng, randomBytes, tempDir } from '../helpers';
import { RawPeer } from './raw-peer';
import { imgServe, must, rssKiB, Served } from './servers';

const MiB = 1 << 20;
const SIZE = 4 * MiB;
const FOUR_GIB_LESS_ONE = 2 ** 32 - 1;

describe('img serve with hostile clients', () => {
  const dir = tempDir('img-nbd-hostile-');
  const file = path.join(dir, 'disk.raw');
  const sock = path.join(dir, 's.sock');
  let content: Buffer;
  let server: Served;

  /** A peer past the greeting, in transmission with simple replies (as the kernel client). */
  const simplePeer = async (): Promise<RawPeer> => {
    const p = await RawPeer.connect(sock);
    await p.greet();
    p.send(P.optionRequest(P.NBD_OPT_EXPORT_NAME));
    const reply = await p.read(10);
    assert.equal(be64(reply, 0), SIZE);
    return p;
  };

  /** A peer in transmission with structured replies and base:allocation. */
  const structuredPeer = async (): Promise<RawPeer> => {
    const p = await RawPeer.connect(sock);
    await p.greet();
    assert.equal((await p.option(P.NBD_OPT_STRUCTURED_REPLY))[0].type, P.NBD_REP_ACK);
    const q = Buffer.concat([P.lengthPrefixed(''), Buffer.from([0, 0, 0, 1]), P.lengthPrefixed(P.CONTEXT_BASE_ALLOCATION)]);
    const meta = await p.option(P.NBD_OPT_SET_META_CONTEXT, q);
    assert.equal(meta[0].type, P.NBD_REP_META_CONTEXT);
    assert.equal(await p.go(''), P.NBD_REP_ACK);
    return p;
  };

  before(async () => {
    content = randomBytes(prng(3), SIZE);
    content.fill(0, MiB, 2 * MiB);
    fs.writeFileSync(file, content);
    must('fallocate', '--punch-hole', '--offset', String(MiB), '--length', String(MiB), file);
    server = await imgServe(['--socket', sock, '-f', 'raw', '--shared', '0', '--persistent', file]);
  });
  after(async () => {
    assert.equal(await server.stop(), 0);
  });

  it('drops clients with unknown client flags, bad option magic or absurd option lengths', async () => {
    const a = await RawPeer.connect(sock);
    await a.greet(0xffffffff);
    assert.ok(await a.closedByServer());
    const b = await RawPeer.connect(sock);
    await b.greet();
    b.send(Buffer.alloc(16, 0x41));
    assert.ok(await b.closedByServer());
    const c = await RawPeer.connect(sock);
    await c.greet();
    const h = P.optionRequest(P.NBD_OPT_GO);
    setBe32(h, 12, FOUR_GIB_LESS_ONE);
    c.send(h);
    assert.ok(await c.closedByServer());
    const d = await RawPeer.connect(sock);
    await d.greet();
    d.send(P.optionRequest(P.NBD_OPT_EXPORT_NAME, Buffer.from('no-such-export')));
    assert.ok(await d.closedByServer());
  });

  it('answers malformed and unknown options with errors and goes on', async () => {
    const p = await RawPeer.connect(sock);
    await p.greet();
    const lying = Buffer.alloc(10);
    setBe32(lying, 0, 1000); // a name longer than the option
    assert.equal((await p.option(P.NBD_OPT_GO, lying)).pop()!.type, P.NBD_REP_ERR_INVALID);
    assert.equal((await p.option(99)).pop()!.type, P.NBD_REP_ERR_UNSUP);
    assert.equal((await p.option(P.NBD_OPT_SET_META_CONTEXT, Buffer.alloc(8))).pop()!.type, P.NBD_REP_ERR_INVALID);
    assert.equal((await p.option(P.NBD_OPT_STARTTLS)).pop()!.type, P.NBD_REP_ERR_POLICY);
    assert.equal((await p.option(P.NBD_OPT_LIST, Buffer.from('x'))).pop()!.type, P.NBD_REP_ERR_INVALID);
    assert.equal(await p.go('missing'), P.NBD_REP_ERR_UNKNOWN);
    assert.equal((await p.option(P.NBD_OPT_STRUCTURED_REPLY, Buffer.from('x'))).pop()!.type, P.NBD_REP_ERR_INVALID);
    const list = await p.option(P.NBD_OPT_LIST);
    assert.deepEqual(list.map((a) => a.type), [P.NBD_REP_SERVER, P.NBD_REP_ACK]);
    assert.equal(await p.go(''), P.NBD_REP_ACK);
    p.request(P.NBD_CMD_READ, 1n, 0, 4096);
    assert.equal((await p.simpleReply(4096)).data!.equals(content.subarray(0, 4096)), true);
    p.close();
  });

  it('serves the simple-reply path and answers bad requests with the spec errors', async () => {
    const p = await simplePeer();
    p.request(P.NBD_CMD_READ, 1n, 3 * MiB, 64 * 1024);
    const r = await p.simpleReply(64 * 1024);
    assert.equal(r.cookie, 1n);
    assert.ok(r.data!.equals(content.subarray(3 * MiB, 3 * MiB + 64 * 1024)));
    const expect = async (cookie: bigint, errno: number) => assert.deepEqual(await p.simpleReply(), { cookie, error: errno });
    p.request(P.NBD_CMD_READ, 2n, 0, FOUR_GIB_LESS_ONE);
    await expect(2n, P.NBD_EINVAL);
    p.request(P.NBD_CMD_READ, 3n, 2n ** 63n, 512);
    await expect(3n, P.NBD_EINVAL);
    p.request(P.NBD_CMD_WRITE_ZEROES, 4n, SIZE - 512, 1024);
    await expect(4n, P.NBD_ENOSPC);
    p.request(99, 5n, 0, 0);
    await expect(5n, P.NBD_EINVAL);
    p.request(P.NBD_CMD_READ, 6n, 0, 512, P.NBD_CMD_FLAG_DF);
    await expect(6n, P.NBD_EINVAL);
    p.request(P.NBD_CMD_BLOCK_STATUS, 7n, 0, 512);
    await expect(7n, P.NBD_EINVAL);
    p.request(P.NBD_CMD_TRIM, 8n, 0, 512, 1 << 9);
    await expect(8n, P.NBD_EINVAL);
    p.request(P.NBD_CMD_FLUSH, 9n, 0, 0);
    await expect(9n, 0);
    // Still in step after all that.
    p.request(P.NBD_CMD_READ, 10n, 0, 512);
    assert.ok((await p.simpleReply(512)).data!.equals(content.subarray(0, 512)));
    p.close();
  });

  it('refuses a 4 GiB write with EOVERFLOW without reading it into memory', async () => {
    const before = rssKiB(server.proc.pid!);
    const p = await simplePeer();
    p.request(P.NBD_CMD_WRITE, 1n, 0, FOUR_GIB_LESS_ONE);
    assert.deepEqual(await p.simpleReply(), { cookie: 1n, error: P.NBD_EOVERFLOW });
    p.send(Buffer.alloc(8 * MiB, 0xee)); // part of the payload, then the client dies
    p.close();
    const q = await simplePeer();
    q.request(P.NBD_CMD_READ, 2n, 0, 512);
    assert.ok((await q.simpleReply(512)).data!.equals(content.subarray(0, 512)), 'nothing was written');
    q.close();
    assert.ok(rssKiB(server.proc.pid!) - before < 64 * 1024);
  });

  it('pipelines many requests on one connection and answers every cookie', async () => {
    const p = await structuredPeer();
    const n = 200;
    for (let i = 0; i < n; i++) {
      if (i % 2) p.request(P.NBD_CMD_READ, BigInt(i), (i * 4096) % SIZE, 4096);
      else p.request(P.NBD_CMD_WRITE, BigInt(i), 3 * MiB + (i * 512) % MiB, 512, 0, content.subarray(3 * MiB + (i * 512) % MiB, 3 * MiB + (i * 512) % MiB + 512));
    }
    const done = new Set<bigint>();
    while (done.size < n) {
      const r = await p.anyReply();
      assert.equal(r.error, 0);
      if (r.type === undefined || r.flags! & P.NBD_REPLY_FLAG_DONE) done.add(r.cookie);
    }
    p.close();
  });

  it('sends holes, errors with messages and single extents on structured connections', async () => {
    const p = await structuredPeer();
    p.request(P.NBD_CMD_READ, 1n, MiB - 4096, MiB + 8192);
    const chunks: { type: number; offset: number; length: number }[] = [];
    for (;;) {
      const r = await p.anyReply();
      if (r.type === P.NBD_REPLY_TYPE_OFFSET_HOLE) chunks.push({ type: r.type, offset: be64(r.data!, 0), length: be32(r.data!, 8) });
      if (r.type === P.NBD_REPLY_TYPE_OFFSET_DATA) chunks.push({ type: r.type, offset: be64(r.data!, 0), length: r.data!.byteLength - 8 });
      if (r.flags! & P.NBD_REPLY_FLAG_DONE) break;
    }
    assert.deepEqual(chunks, [
      { type: P.NBD_REPLY_TYPE_OFFSET_DATA, offset: MiB - 4096, length: 4096 },
      { type: P.NBD_REPLY_TYPE_OFFSET_HOLE, offset: MiB, length: MiB },
      { type: P.NBD_REPLY_TYPE_OFFSET_DATA, offset: 2 * MiB, length: 4096 },
    ]);
    p.request(P.NBD_CMD_READ, 2n, SIZE, 512);
    const err = await p.anyReply();
    assert.equal(err.type, P.NBD_REPLY_TYPE_ERROR);
    assert.equal(err.error, P.NBD_EINVAL);
    assert.match(err.data!.toString('utf8', 6), /past the end of the export/);
    p.request(P.NBD_CMD_BLOCK_STATUS, 3n, MiB + 4096, 4096, P.NBD_CMD_FLAG_REQ_ONE);
    const bs = await p.anyReply();
    assert.equal(bs.type, P.NBD_REPLY_TYPE_BLOCK_STATUS);
    assert.equal(bs.data!.byteLength, 12);
    assert.equal(be32(bs.data!, 4), 4096);
    assert.equal(be32(bs.data!, 8), P.NBD_STATE_HOLE | P.NBD_STATE_ZERO);
    p.request(P.NBD_CMD_WRITE_ZEROES, 4n, 100, 1000, P.NBD_CMD_FLAG_FAST_ZERO); // not sector-aligned: not fast
    assert.equal((await p.anyReply()).error, P.NBD_ENOTSUP);
    p.close();
  });

  it('reads large write payloads into place however the client cuts them, and survives one cut short', async () => {
    const region = 3 * MiB;
    const fresh = randomBytes(prng(11), MiB);
    const readBack = async (p: RawPeer, cookie: bigint) => {
      p.request(P.NBD_CMD_READ, cookie, region, MiB);
      return (await p.simpleReply(MiB)).data!;
    };
    // A 512 KiB write dribbled out: the header and first bytes one at a time, then 7 KiB slices.
    const p = await simplePeer();
    const bytes = Buffer.concat([P.requestHeader(0, P.NBD_CMD_WRITE, 1n, region, 512 * 1024), fresh.subarray(0, 512 * 1024)]);
    for (let at = 0; at < bytes.byteLength; ) {
      const n = at < P.REQUEST_HEADER_SIZE + 10 ? 1 : 7 * 1024;
      p.send(bytes.subarray(at, at + n));
      at += n;
      await new Promise((r) => setImmediate(r));
    }
    assert.deepEqual(await p.simpleReply(), { cookie: 1n, error: 0 });
    // Two 256 KiB writes and a read in one send: the second payload starts in the first's read.
    const second = fresh.subarray(512 * 1024);
    p.send(
      Buffer.concat([
        P.requestHeader(0, P.NBD_CMD_WRITE, 2n, region + 512 * 1024, 256 * 1024),
        second.subarray(0, 256 * 1024),
        P.requestHeader(0, P.NBD_CMD_WRITE, 3n, region + 768 * 1024, 256 * 1024),
        second.subarray(256 * 1024),
      ]),
    );
    assert.equal((await p.simpleReply()).error, 0);
    assert.equal((await p.simpleReply()).error, 0);
    assert.ok((await readBack(p, 4n)).equals(fresh));
    // A client that dies halfway through a payload: nothing of it is written.
    const q = await simplePeer();
    q.send(Buffer.concat([P.requestHeader(0, P.NBD_CMD_WRITE, 1n, region, MiB), Buffer.alloc(300 * 1024, 0xee)]));
    await new Promise((r) => setTimeout(r, 50));
    q.close();
    assert.ok((await readBack(p, 5n)).equals(fresh));
    p.request(P.NBD_CMD_WRITE, 6n, region, MiB, 0, content.subarray(region, region + MiB)); // as the other tests expect
    assert.equal((await p.simpleReply()).error, 0);
    p.close();
  });

  it('disconnects on a bad request magic and survives truncated requests', async () => {
    const p = await simplePeer();
    p.send(Buffer.alloc(P.REQUEST_HEADER_SIZE, 0x55));
    assert.ok(await p.closedByServer());
    const q = await simplePeer();
    q.send(P.requestHeader(0, P.NBD_CMD_READ, 1n, 0, 512).subarray(0, 14));
    q.close();
    const w = await simplePeer();
    w.send(P.requestHeader(0, P.NBD_CMD_WRITE, 1n, 0, 4096));
    w.send(Buffer.alloc(100));
    w.close();
  });

  it('keeps serving with flat memory after a thousand sessions opened and dropped', async () => {
    const dropSession = async (i: number) => {
      const p = await RawPeer.connect(sock);
      try {
        switch (i % 5) {
          case 0:
            break; // connect and vanish
          case 1:
            await p.greet();
            p.send(P.optionRequest(P.NBD_OPT_GO).subarray(0, 9)); // half an option
            break;
          case 2: {
            await p.greet();
            p.send(P.optionRequest(P.NBD_OPT_EXPORT_NAME));
            await p.read(10);
            p.request(P.NBD_CMD_READ, 1n, 0, MiB); // leave with a read in flight
            break;
          }
          case 3:
            p.send(Buffer.from('GET / HTTP/1.1\r\n\r\n'));
            break;
          default:
            await p.greet();
            await p.option(P.NBD_OPT_LIST);
        }
      } finally {
        p.close();
      }
    };
    const round = async (from: number, count: number) => {
      for (let i = from; i < from + count; i += 50) await Promise.all(Array.from({ length: 50 }, (_, k) => dropSession(i + k)));
    };
    await round(0, 200);
    const warm = rssKiB(server.proc.pid!);
    await round(200, 1000);
    const grown = rssKiB(server.proc.pid!) - warm;
    assert.ok(grown < 48 * 1024, `resident memory grew by ${grown} KiB`);
    const info = JSON.parse(must('nbdinfo', '--json', `nbd+unix:///?socket=${sock}`));
    assert.equal(info.exports[0]['export-size'], SIZE);
  });
});
