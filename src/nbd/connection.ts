/**
 * The transmission phase of one connection (proto.md "Transmission", "Request types"):
 * requests are read in order and served concurrently, replies go out as each completes.
 * Memory is bounded: a request's payload is read only once the bytes in flight on this
 * connection (write payloads and read replies) fit under MAX_IN_FLIGHT_BYTES.
 */
import { ImageError } from '../block/errors';
import { HostPiece, hostPieces } from '../block/host-pieces';
import { be16, be32, be64n } from '../io/bytes';
import { contextId, Negotiated } from './handshake';
import { BufferPool } from './buffers';
import { nbdErrno } from './export';
import * as P from './protocol';
import { ReadPiece, Replier } from './reply';
import { replySink, ReplySink } from './sink';

/** Cap on payload bytes held for this connection's requests at once. */
const MAX_IN_FLIGHT_BYTES = 64 << 20;
const MAX_IN_FLIGHT_REQUESTS = 256;
/** Block status looks this far at most per request, so one request's work stays bounded. */
const STATUS_LIMIT = 1 << 30;
/** Read reply and write payload buffers kept for reuse, shared by every connection of the process. */
const replyBuffers = new BufferPool(64 << 20);
const payloadBuffers = new BufferPool(64 << 20);

/** Command flags each command accepts (FUA is valid on all: "Command flags"). */
const ALLOWED_FLAGS: Record<number, number> = {
  [P.NBD_CMD_READ]: P.NBD_CMD_FLAG_FUA | P.NBD_CMD_FLAG_DF,
  [P.NBD_CMD_WRITE]: P.NBD_CMD_FLAG_FUA,
  [P.NBD_CMD_FLUSH]: P.NBD_CMD_FLAG_FUA,
  [P.NBD_CMD_TRIM]: P.NBD_CMD_FLAG_FUA,
  [P.NBD_CMD_CACHE]: P.NBD_CMD_FLAG_FUA,
  [P.NBD_CMD_WRITE_ZEROES]: P.NBD_CMD_FLAG_FUA | P.NBD_CMD_FLAG_NO_HOLE | P.NBD_CMD_FLAG_FAST_ZERO,
  [P.NBD_CMD_BLOCK_STATUS]: P.NBD_CMD_FLAG_FUA | P.NBD_CMD_FLAG_REQ_ONE,
  [P.NBD_CMD_DISC]: 0,
};

const WRITES = new Set([P.NBD_CMD_WRITE, P.NBD_CMD_TRIM, P.NBD_CMD_WRITE_ZEROES]);

interface Request {
  flags: number;
  type: number;
  cookie: bigint;
  offset: number;
  length: number;
  payload?: Buffer;
}

/** A request the server refuses before touching the device, with its error value. */
class Refusal {
  constructor(
    readonly errno: number,
    readonly message: string,
  ) {}
}

export class Connection {
  private readonly sink: ReplySink;
  private readonly replier: Replier;
  private inFlight = 0;
  private inFlightBytes = 0;
  private waiters: (() => void)[] = [];
  private stopping = false;

  constructor(private readonly s: Negotiated) {
    this.sink = replySink(s.stream);
    this.replier = new Replier(this.sink);
  }

  get idle(): boolean {
    return this.inFlight === 0;
  }

  /** Serves requests until NBD_CMD_DISC, a protocol violation or the end of the stream. */
  async run(): Promise<void> {
    try {
      for (;;) {
        const head = await this.s.reader.read(P.REQUEST_HEADER_SIZE);
        if (be32(head, 0) !== P.NBD_REQUEST_MAGIC) break; // cannot resynchronise: hard disconnect
        const offset = be64n(head, 16);
        const req: Request = {
          flags: be16(head, 4),
          type: be16(head, 6),
          cookie: be64n(head, 8),
          offset: offset > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(offset),
          length: be32(head, 24),
        };
        if (req.type === P.NBD_CMD_DISC) break;
        const cost = this.cost(req);
        if (req.type === P.NBD_CMD_WRITE && req.length > P.MAX_PAYLOAD) {
          this.refuse(req, new Refusal(P.NBD_EOVERFLOW, `write of ${req.length} bytes is over the ${P.MAX_PAYLOAD}-byte limit`));
          await this.s.reader.skip(req.length); // stays in step with a client that sent it anyway
          continue;
        }
        await this.reserve(cost);
        if (req.type === P.NBD_CMD_WRITE) {
          req.payload = payloadBuffers.take(req.length);
          await this.s.reader.readInto(req.payload);
        }
        this.inFlight++;
        void this.serve(req).finally(() => {
          if (req.payload) payloadBuffers.give(req.payload);
          this.release(cost);
        });
      }
    } catch (err) {
      if (!(err instanceof ImageError)) throw err; // the stream ended: nothing to answer
    }
    await this.drain();
    await this.sink.end();
  }

  /** Stops serving new requests (they get NBD_ESHUTDOWN) and waits for those in flight. */
  async shutdown(): Promise<void> {
    this.stopping = true;
    await this.drain();
  }

  close(): void {
    this.sink.destroy();
  }

  private async drain(): Promise<void> {
    while (this.inFlight > 0) await this.changed();
  }

  /** Payload bytes a request holds while in flight: its write data or its read reply. */
  private cost(req: Request): number {
    return req.type === P.NBD_CMD_WRITE || req.type === P.NBD_CMD_READ ? Math.min(req.length, P.MAX_PAYLOAD) : 0;
  }

  private async reserve(bytes: number): Promise<void> {
    while (this.inFlight >= MAX_IN_FLIGHT_REQUESTS || (this.inFlight > 0 && this.inFlightBytes + bytes > MAX_IN_FLIGHT_BYTES)) {
      await this.changed();
    }
    this.inFlightBytes += bytes;
  }

  private release(bytes: number): void {
    this.inFlight--;
    this.inFlightBytes -= bytes;
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  /** Resolves when a request in flight completes. */
  private changed(): Promise<void> {
    return new Promise((r) => this.waiters.push(r));
  }

  private refuse(req: Request, r: Refusal): void {
    if (this.s.structured) this.replier.error(req.cookie, r.errno, r.message);
    else this.replier.simple(req.cookie, r.errno);
  }

  /** Checks a request against the export and the negotiation, as "Error values" asks. */
  private validate(req: Request): void {
    const e = this.s.export;
    if (this.stopping) throw new Refusal(P.NBD_ESHUTDOWN, 'the server is shutting down');
    const allowed = ALLOWED_FLAGS[req.type];
    if (allowed === undefined) throw new Refusal(P.NBD_EINVAL, `unknown command ${req.type}`);
    if ((req.flags & ~allowed) !== 0 || (req.flags & P.NBD_CMD_FLAG_DF && !this.s.structured)) {
      throw new Refusal(P.NBD_EINVAL, `flags 0x${req.flags.toString(16)} are not valid for command ${req.type}`);
    }
    if (WRITES.has(req.type) && e.readOnly) throw new Refusal(P.NBD_EPERM, 'the export is read-only');
    if (req.type === P.NBD_CMD_FLUSH) return;
    if (req.offset + req.length > e.device.size) {
      const errno = req.type === P.NBD_CMD_WRITE || req.type === P.NBD_CMD_WRITE_ZEROES ? P.NBD_ENOSPC : P.NBD_EINVAL;
      throw new Refusal(errno, `offset ${req.offset} length ${req.length} is past the end of the export (${e.device.size} bytes)`);
    }
    if (req.type === P.NBD_CMD_READ && req.length > P.MAX_PAYLOAD) {
      throw new Refusal(this.s.structured ? P.NBD_EOVERFLOW : P.NBD_EINVAL, `read of ${req.length} bytes is over the ${P.MAX_PAYLOAD}-byte limit`);
    }
    if (req.type === P.NBD_CMD_BLOCK_STATUS && (this.s.contexts.length === 0 || req.length === 0)) {
      throw new Refusal(P.NBD_EINVAL, req.length === 0 ? 'block status of 0 bytes' : 'no metadata context was negotiated');
    }
    if (req.type === P.NBD_CMD_WRITE_ZEROES && req.flags & P.NBD_CMD_FLAG_FAST_ZERO) {
      // Zeroing is fast (metadata only) for whole clusters; partial ones are written as data.
      const g = e.granularity;
      if (req.offset % g !== 0 || (req.length % g !== 0 && req.offset + req.length !== e.device.size)) {
        throw new Refusal(P.NBD_ENOTSUP, 'zeroing a partial cluster is not faster than writing it');
      }
    }
  }

  private async serve(req: Request): Promise<void> {
    try {
      this.validate(req);
    } catch (err) {
      if (!(err instanceof Refusal)) throw err;
      this.refuse(req, err);
      return;
    }
    const dev = this.s.export.device;
    const fua = (req.flags & P.NBD_CMD_FLAG_FUA) !== 0;
    try {
      switch (req.type) {
        case P.NBD_CMD_READ:
          return await this.read(req);
        case P.NBD_CMD_WRITE:
          await dev.write(req.offset, req.payload!, { fua });
          break;
        case P.NBD_CMD_WRITE_ZEROES:
          await dev.writeZeroes(req.offset, req.length, { fua, mayUnmap: (req.flags & P.NBD_CMD_FLAG_NO_HOLE) === 0 });
          break;
        case P.NBD_CMD_TRIM:
          await dev.discard(req.offset, req.length);
          if (fua) await dev.flush();
          break;
        case P.NBD_CMD_FLUSH:
          await dev.flush();
          break;
        case P.NBD_CMD_CACHE:
          // Looking the range up loads the format's mapping tables into their cache.
          if (req.length > 0) await dev.blockStatus(req.offset, req.length);
          break;
        case P.NBD_CMD_BLOCK_STATUS: {
          // A shorter answer is allowed; the client asks again from where it ends.
          const extents = await dev.blockStatus(req.offset, Math.min(req.length, STATUS_LIMIT));
          const contexts = this.s.contexts.map((name) => ({ id: contextId(name), name }));
          this.replier.blockStatus(req.cookie, contexts, extents, (req.flags & P.NBD_CMD_FLAG_REQ_ONE) !== 0, req.length);
          return;
        }
      }
      this.replier.simple(req.cookie, 0);
    } catch (err) {
      const errno = nbdErrno(err, WRITES.has(req.type));
      const message = err instanceof Error ? err.message : String(err);
      if (!this.s.structured) this.replier.simple(req.cookie, errno);
      else this.replier.error(req.cookie, errno, message, req.type === P.NBD_CMD_FLUSH ? undefined : req.offset);
    }
  }

  private async read(req: Request): Promise<void> {
    const dev = this.s.export.device;
    const structured = this.s.structured;
    const fragment = (req.flags & P.NBD_CMD_FLAG_DF) === 0;
    // The reply's bytes count as in flight until the socket has taken them.
    const hostParts = this.sink.files ? await hostPieces(dev, req.offset, req.length) : null;
    // Without a file range to send, one read of the whole range is cheaper than a read per piece.
    if (hostParts?.some((p) => p.kind === 'file')) {
      const buffers: Buffer[] = [];
      try {
        const pieces = await this.readParts(req.offset, hostParts, buffers);
        await new Promise<void>((done) => this.replier.readPieces(req.cookie, req.offset, pieces, structured, fragment, done));
      } finally {
        for (const b of buffers) replyBuffers.give(b);
      }
      return;
    }
    const data = replyBuffers.take(req.length);
    try {
      await dev.read(req.offset, data);
    } catch (err) {
      replyBuffers.give(data);
      throw err;
    }
    await new Promise<void>((done) => this.replier.read(req.cookie, req.offset, data, structured, fragment, done));
    replyBuffers.give(data);
  }

  /** Host pieces as reply pieces: file ranges stay ranges, what only the format can read is read into `buffers`. */
  private readParts(offset: number, pieces: HostPiece[], buffers: Buffer[]): Promise<ReadPiece[]> {
    let at = offset;
    return Promise.all(
      pieces.map(async (p): Promise<ReadPiece> => {
        const from = at;
        at += p.length;
        if (p.kind === 'file') return { length: p.length, part: p };
        if (p.kind === 'zero') return { length: p.length };
        const b = replyBuffers.take(p.length);
        buffers.push(b);
        await this.s.export.device.read(from, b);
        return { length: p.length, part: b };
      }),
    );
  }
}
