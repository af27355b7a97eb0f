/** A hand-driven NBD client on a raw socket, to send what real clients never would. */
import * as net from 'node:net';
import { be16, be32, be64n, setBe16, setBe32 } from '../../src/io/bytes';
import * as P from '../../src/nbd/protocol';
import { ByteReader } from '../../src/nbd/reader';

export interface OptionAnswer {
  type: number;
  data: Buffer;
}

export interface Reply {
  cookie: bigint;
  error: number;
  /** Simple replies: the data read after it; structured: the chunk type, flags and payload. */
  data?: Buffer;
  type?: number;
  flags?: number;
}

export class RawPeer {
  private constructor(
    readonly socket: net.Socket,
    readonly reader: ByteReader,
  ) {}

  static connect(socketPath: string): Promise<RawPeer> {
    return new Promise((resolve, reject) => {
      const s = net.createConnection(socketPath, () => resolve(new RawPeer(s, new ByteReader(s))));
      s.once('error', reject);
      s.on('error', () => undefined);
    });
  }

  send(b: Uint8Array): void {
    this.socket.write(b);
  }

  read(n: number): Promise<Buffer> {
    return this.reader.read(n);
  }

  /** Resolves true once the server has closed the connection (and nothing more came). */
  async closedByServer(): Promise<boolean> {
    try {
      await this.reader.read(1);
      return false;
    } catch {
      return true;
    }
  }

  /** Reads the greeting and answers with `flags`. */
  async greet(flags = P.NBD_FLAG_C_FIXED_NEWSTYLE | P.NBD_FLAG_C_NO_ZEROES): Promise<number> {
    const hello = await this.read(18);
    if (be64n(hello, 0) !== P.NBDMAGIC || be64n(hello, 8) !== P.IHAVEOPT) throw new Error('bad greeting');
    const f = Buffer.alloc(4);
    setBe32(f, 0, flags);
    this.send(f);
    return be16(hello, 16);
  }

  /** Sends an option and collects replies up to the final ACK or error. */
  async option(opt: number, data?: Uint8Array): Promise<OptionAnswer[]> {
    this.send(P.optionRequest(opt, data));
    const out: OptionAnswer[] = [];
    for (;;) {
      const h = await this.read(P.OPTION_REPLY_HEADER_SIZE);
      const a = { type: be32(h, 12), data: await this.read(be32(h, 16)) };
      out.push(a);
      if (a.type === P.NBD_REP_ACK || a.type >= P.NBD_REP_FLAG_ERROR) return out;
    }
  }

  /** NBD_OPT_GO for `name` with no information requests; returns the final reply type. */
  async go(name: string): Promise<number> {
    const n = Buffer.from(name);
    const d = Buffer.alloc(6 + n.byteLength);
    setBe32(d, 0, n.byteLength);
    d.set(n, 4);
    setBe16(d, 4 + n.byteLength, 0);
    const answers = await this.option(P.NBD_OPT_GO, d);
    return answers[answers.length - 1].type;
  }

  request(type: number, cookie: bigint, offset: number | bigint, length: number, flags = 0, payload?: Uint8Array): void {
    const h = P.requestHeader(flags, type, cookie, 0, length);
    h.writeBigUInt64BE(BigInt(offset), 16);
    this.send(payload ? Buffer.concat([h, payload]) : h);
  }

  /** A simple reply; `readLength` bytes of data follow a successful READ. */
  async simpleReply(readLength = 0): Promise<Reply> {
    const h = await this.read(P.SIMPLE_REPLY_SIZE);
    if (be32(h, 0) !== P.NBD_SIMPLE_REPLY_MAGIC) throw new Error(`not a simple reply: 0x${be32(h, 0).toString(16)}`);
    const r: Reply = { cookie: be64n(h, 8), error: be32(h, 4) };
    if (r.error === 0 && readLength > 0) r.data = await this.read(readLength);
    return r;
  }

  /** One reply message of either kind (structured chunks come back one at a time). */
  async anyReply(): Promise<Reply> {
    const h = await this.read(P.SIMPLE_REPLY_SIZE);
    const magic = be32(h, 0);
    if (magic === P.NBD_SIMPLE_REPLY_MAGIC) return { cookie: be64n(h, 8), error: be32(h, 4) };
    if (magic !== P.NBD_STRUCTURED_REPLY_MAGIC) throw new Error(`bad reply magic 0x${magic.toString(16)}`);
    const length = be32(await this.read(4), 0);
    const data = await this.read(length);
    const type = be16(h, 6);
    return { cookie: be64n(h, 8), flags: be16(h, 4), type, data, error: type & P.NBD_REPLY_TYPE_ERROR_BIT ? be32(data, 0) : 0 };
  }

  close(): void {
    this.socket.destroy();
  }
}
