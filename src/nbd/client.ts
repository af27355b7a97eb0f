/**
 * NbdClient: an NBD export as an Image (a raw device), so nbd:// and nbd+unix:// URIs work
 * wherever a file name does. Requests are pipelined on one connection and matched to
 * replies by cookie; large requests are split at the server's maximum payload.
 */
import { BlockDevice, Extent, WriteOptions, ZeroOptions } from '../block/device';
import { ErrorCode, ImageError } from '../block/errors';
import { checkRange, pushExtent } from '../block/extents';
import { Image, ImageInfo } from '../block/image';
import { be16, be32, be64, be64n } from '../io/bytes';
import { ClientSession, clientHandshake } from './client-handshake';
import * as P from './protocol';
import { parseNbdUri } from './uri';

/** Length of one WRITE_ZEROES, TRIM or BLOCK_STATUS request (lengths are 32-bit). */
const EFFECT_CHUNK = 1 << 30;
/** A reply chunk longer than this is a broken or hostile server. */
const MAX_CHUNK = P.MAX_PAYLOAD + 64;

interface Pending {
  type: number;
  offset: number;
  into?: Uint8Array;
  extents?: { length: number; status: number }[];
  error?: ImageError;
  resolve: () => void;
  reject: (e: Error) => void;
}

function serverError(errno: number, message: string, uri: string): ImageError {
  const codes: Record<number, ErrorCode> = { [P.NBD_EPERM]: 'READ_ONLY', [P.NBD_ENOSPC]: 'NO_SPACE', [P.NBD_ENOTSUP]: 'UNSUPPORTED' };
  return new ImageError(codes[errno] ?? 'IO', `the NBD server failed the request (error ${errno})${message ? `: ${message}` : ''}`, { file: uri });
}

export class NbdClient implements Image, BlockDevice {
  readonly format = 'raw';
  readonly backing = null;
  private readonly pending = new Map<bigint, Pending>();
  /** Requests not yet answered, for close() to wait for. */
  private readonly inFlight = new Set<Promise<Pending>>();
  private nextCookie = 1n;
  private broken: ImageError | null = null;
  private closed = false;

  private constructor(
    readonly filename: string,
    private readonly s: ClientSession,
    private readonly openedReadOnly: boolean,
  ) {
    void this.receive();
  }

  static async open(uri: string, opts: { readOnly?: boolean } = {}): Promise<NbdClient> {
    return new NbdClient(uri, await clientHandshake(parseNbdUri(uri), uri), !!opts.readOnly);
  }

  get size(): number {
    return this.s.size;
  }
  get readOnly(): boolean {
    return this.openedReadOnly || (this.s.flags & P.NBD_FLAG_READ_ONLY) !== 0;
  }
  get clusterSize(): number {
    return Math.max(512, this.s.preferredBlock);
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    checkRange(this.size, offset, into.byteLength, 'read');
    const parts: Promise<void>[] = [];
    for (let o = 0; o < into.byteLength; o += this.s.maxPayload) {
      const piece = into.subarray(o, Math.min(o + this.s.maxPayload, into.byteLength));
      parts.push(this.request(P.NBD_CMD_READ, 0, offset + o, piece.byteLength, undefined, piece));
    }
    await Promise.all(parts);
  }

  async write(offset: number, data: Uint8Array, opts?: WriteOptions): Promise<void> {
    this.checkWritable(offset, data.byteLength);
    const parts: Promise<void>[] = [];
    for (let o = 0; o < data.byteLength; o += this.s.maxPayload) {
      const piece = data.subarray(o, Math.min(o + this.s.maxPayload, data.byteLength));
      parts.push(this.request(P.NBD_CMD_WRITE, this.fuaFlag(opts?.fua), offset + o, piece.byteLength, piece));
    }
    await Promise.all(parts);
    await this.flushUnlessFua(opts?.fua);
  }

  async writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    this.checkWritable(offset, length);
    if (!(this.s.flags & P.NBD_FLAG_SEND_WRITE_ZEROES)) {
      const zeroes = new Uint8Array(Math.min(length, this.s.maxPayload));
      for (let o = 0; o < length; o += zeroes.byteLength) await this.write(offset + o, zeroes.subarray(0, Math.min(zeroes.byteLength, length - o)), opts);
      return;
    }
    const flags = this.fuaFlag(opts?.fua) | (opts?.mayUnmap ? 0 : P.NBD_CMD_FLAG_NO_HOLE);
    await this.effect(P.NBD_CMD_WRITE_ZEROES, flags, offset, length);
    await this.flushUnlessFua(opts?.fua);
  }

  /** TRIM where the server offers it; a discard is only a hint, so otherwise nothing happens. */
  async discard(offset: number, length: number): Promise<void> {
    this.checkWritable(offset, length);
    if (this.s.flags & P.NBD_FLAG_SEND_TRIM) await this.effect(P.NBD_CMD_TRIM, 0, offset, length);
  }

  async flush(): Promise<void> {
    if (this.s.flags & P.NBD_FLAG_SEND_FLUSH && !this.readOnly) await this.request(P.NBD_CMD_FLUSH, 0, 0, 0);
  }

  /**
   * base:allocation as extents: ZERO reads as zeroes, anything else is data. The export is one
   * raw layer (depth 0) mapped one to one, as qemu's NBD driver reports it.
   */
  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    checkRange(this.size, offset, length, 'block status');
    const out: Extent[] = [];
    if (this.s.allocationContext === undefined) {
      pushExtent(out, { offset, length, kind: 'data', depth: 0, hostOffset: offset });
      return out;
    }
    for (let pos = offset, end = offset + length; pos < end; ) {
      const p = await this.send(P.NBD_CMD_BLOCK_STATUS, 0, pos, Math.min(EFFECT_CHUNK, end - pos));
      const before = pos;
      for (const d of p.extents ?? []) {
        const n = Math.min(d.length, end - pos);
        pushExtent(out, { offset: pos, length: n, kind: d.status & P.NBD_STATE_ZERO ? 'zero' : 'data', depth: 0, hostOffset: pos });
        pos += n;
        if (pos >= end) break;
      }
      if (pos === before) throw new ImageError('IO', `the server's block status at offset ${pos} covers nothing`, { file: this.filename });
    }
    return out;
  }

  async info(): Promise<ImageInfo> {
    return { filename: this.filename, format: 'raw', virtualSize: this.size, actualSize: -1 };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.allSettled(this.inFlight);
    const socket = this.s.socket;
    if (this.broken) socket.destroy();
    else socket.end(P.requestHeader(0, P.NBD_CMD_DISC, 0n, 0, 0), () => socket.destroy());
  }

  private fuaFlag(fua?: boolean): number {
    return fua && this.s.flags & P.NBD_FLAG_SEND_FUA ? P.NBD_CMD_FLAG_FUA : 0;
  }

  private async flushUnlessFua(fua?: boolean): Promise<void> {
    if (fua && !(this.s.flags & P.NBD_FLAG_SEND_FUA)) await this.flush();
  }

  private checkWritable(offset: number, length: number): void {
    if (this.readOnly) throw new ImageError('READ_ONLY', 'the NBD export is read-only', { file: this.filename });
    checkRange(this.size, offset, length, 'write');
  }

  /** A request without payload whose effect length is cut into 32-bit pieces. */
  private async effect(type: number, flags: number, offset: number, length: number): Promise<void> {
    const parts: Promise<void>[] = [];
    for (let o = 0; o < length; o += EFFECT_CHUNK) parts.push(this.request(type, flags, offset + o, Math.min(EFFECT_CHUNK, length - o)));
    await Promise.all(parts);
  }

  private async request(type: number, flags: number, offset: number, length: number, payload?: Uint8Array, into?: Uint8Array): Promise<void> {
    await this.send(type, flags, offset, length, payload, into);
  }

  private send(type: number, flags: number, offset: number, length: number, payload?: Uint8Array, into?: Uint8Array): Promise<Pending> {
    if (this.broken) return Promise.reject(this.broken);
    if (this.closed) return Promise.reject(new ImageError('IO', 'the NBD connection is closed', { file: this.filename }));
    const cookie = this.nextCookie++;
    const promise = new Promise<Pending>((resolve, reject) => {
      const p: Pending = { type, offset, into, resolve: () => (p.error ? reject(p.error) : resolve(p)), reject };
      this.pending.set(cookie, p);
      const sock = this.s.socket;
      sock.cork();
      sock.write(P.requestHeader(flags, type, cookie, offset, length));
      if (payload) sock.write(payload);
      sock.uncork();
    });
    this.inFlight.add(promise);
    const forget = () => this.inFlight.delete(promise);
    promise.then(forget, forget);
    return promise;
  }

  /** Reads replies until the connection ends; a reply that breaks the protocol ends it. */
  private async receive(): Promise<void> {
    const r = this.s.reader;
    try {
      for (;;) {
        const head = await r.read(P.SIMPLE_REPLY_SIZE);
        const magic = be32(head, 0);
        const cookie = be64n(head, 8);
        const p = this.pending.get(cookie);
        if (!p) throw new ImageError('IO', `reply for unknown cookie ${cookie}`);
        if (magic === P.NBD_SIMPLE_REPLY_MAGIC) {
          const errno = be32(head, 4);
          if (errno) p.error = serverError(errno, '', this.filename);
          else if (p.type === P.NBD_CMD_READ && p.into) p.into.set(await r.read(p.into.byteLength));
          this.pending.delete(cookie);
          p.resolve();
          continue;
        }
        if (magic !== P.NBD_STRUCTURED_REPLY_MAGIC) throw new ImageError('IO', `bad reply magic 0x${magic.toString(16)}`);
        const flags = be16(head, 4);
        const type = be16(head, 6);
        const length = be32(await r.read(4), 0);
        if (length > MAX_CHUNK) throw new ImageError('IO', `reply chunk of ${length} bytes`);
        this.chunk(p, type, await r.read(length));
        if (flags & P.NBD_REPLY_FLAG_DONE) {
          this.pending.delete(cookie);
          p.resolve();
        }
      }
    } catch (err) {
      this.broken = err instanceof ImageError ? new ImageError(err.code, err.message, { file: this.filename, cause: err }) : (err as ImageError);
      for (const p of this.pending.values()) p.reject(this.broken);
      this.pending.clear();
      this.s.socket.destroy();
    }
  }

  /** Applies one structured reply chunk to its request, checking it stays inside it. */
  private chunk(p: Pending, type: number, body: Buffer): void {
    const inside = (at: number, n: number) => p.into && at >= p.offset && at + n <= p.offset + p.into.byteLength;
    if (type === P.NBD_REPLY_TYPE_OFFSET_DATA) {
      const at = be64(body, 0);
      if (!inside(at, body.byteLength - 8)) throw new ImageError('IO', `data chunk at ${at} lies outside its read`);
      p.into!.set(body.subarray(8), at - p.offset);
    } else if (type === P.NBD_REPLY_TYPE_OFFSET_HOLE) {
      const at = be64(body, 0);
      const n = be32(body, 8);
      if (!inside(at, n)) throw new ImageError('IO', `hole chunk at ${at} lies outside its read`);
      p.into!.fill(0, at - p.offset, at - p.offset + n);
    } else if (type === P.NBD_REPLY_TYPE_BLOCK_STATUS) {
      if (be32(body, 0) !== this.s.allocationContext || body.byteLength < 12 || (body.byteLength - 4) % 8 !== 0) return;
      p.extents = [];
      for (let o = 4; o < body.byteLength; o += 8) p.extents.push({ length: be32(body, o), status: be32(body, o + 4) });
    } else if (type & P.NBD_REPLY_TYPE_ERROR_BIT) {
      const n = be16(body, 4);
      p.error = serverError(be32(body, 0), body.toString('utf8', 6, 6 + Math.min(n, body.byteLength - 6)), this.filename);
    } else if (type !== P.NBD_REPLY_TYPE_NONE) {
      throw new ImageError('IO', `unknown reply chunk type ${type}`);
    }
  }
}

export function openNbd(uri: string, opts: { readOnly?: boolean; format?: string } = {}): Promise<NbdClient> {
  if (opts.format !== undefined && opts.format !== 'raw') {
    throw new ImageError('UNSUPPORTED', `an NBD export is a raw device: format '${opts.format}' cannot be opened over NBD`, { file: uri });
  }
  return NbdClient.open(uri, opts);
}
