/**
 * Writing transmission-phase replies (proto.md "Simple reply message", "Structured reply
 * chunk message") to a ReplySink, which keeps each reply's messages together.
 */
import { Extent } from '../block/device';
import { setBe16, setBe32, setBe64 } from '../io/bytes';
import { extentStatus } from './export';
import * as P from './protocol';
import { ReplyPart, ReplySink } from './sink';

/** Zero detection granularity: shorter zero runs go out as data (a chunk header costs more). */
const MIN_HOLE = 4096;
const ZERO_BLOCK = Buffer.alloc(MIN_HOLE);
/** Zeroes sent as data (a hole where the reply cannot say so) are slices of this. */
const ZEROES = Buffer.alloc(1 << 20);

/** `length` bytes of a read reply: `part`, or zeroes when it is absent. */
export interface ReadPiece {
  length: number;
  part?: ReplyPart;
}

/** Part of a read reply: bytes, or a hole when `parts` is absent. */
interface Run {
  at: number;
  length: number;
  parts?: ReplyPart[];
}

export class Replier {
  constructor(private readonly sink: ReplySink) {}

  private send(parts: ReplyPart[], done?: () => void): void {
    this.sink.send(parts, done);
  }

  simple(cookie: bigint, error: number): void {
    this.send([P.simpleReply(error, cookie)]);
  }

  /** A structured error chunk: ERROR, or ERROR_OFFSET when the failing offset is known. */
  error(cookie: bigint, error: number, message: string, offset?: number): void {
    const text = Buffer.from(message.slice(0, P.MAX_STRING), 'utf8').subarray(0, P.MAX_STRING);
    const type = offset === undefined ? P.NBD_REPLY_TYPE_ERROR : P.NBD_REPLY_TYPE_ERROR_OFFSET;
    const length = 6 + text.byteLength + (offset === undefined ? 0 : 8);
    const b = P.structuredHeader(P.NBD_REPLY_FLAG_DONE, type, cookie, length, length);
    setBe32(b, P.STRUCTURED_HEADER_SIZE, error);
    setBe16(b, P.STRUCTURED_HEADER_SIZE + 4, text.byteLength);
    b.set(text, P.STRUCTURED_HEADER_SIZE + 6);
    if (offset !== undefined) setBe64(b, P.STRUCTURED_HEADER_SIZE + 6 + text.byteLength, offset);
    this.send([b]);
  }

  /**
   * A successful READ reply of bytes read into `data`: with structured replies, OFFSET_DATA
   * chunks for data and OFFSET_HOLE chunks for blocks that read as zeroes, unless `fragment`
   * is false (DF); with simple replies, the bytes after the header.
   */
  read(cookie: bigint, offset: number, data: Buffer, structured: boolean, fragment: boolean, done: () => void): void {
    const runs = structured && fragment ? zeroRuns(offset, data) : [{ at: offset, length: data.byteLength, hole: false }];
    this.readRuns(
      cookie,
      runs.map((r) => (r.hole ? r : { ...r, parts: [data.subarray(r.at - offset, r.at - offset + r.length)] })),
      structured,
      done,
    );
  }

  /** A successful READ reply of pieces: zero pieces are holes where the reply can say so. */
  readPieces(cookie: bigint, offset: number, pieces: ReadPiece[], structured: boolean, fragment: boolean, done: () => void): void {
    const holes = structured && fragment;
    const runs: Run[] = [];
    let at = offset;
    for (const p of pieces) {
      const parts = p.part ? [p.part] : holes ? undefined : zeroParts(p.length);
      const last = runs[runs.length - 1];
      if (last && !!last.parts === !!parts) {
        last.length += p.length;
        if (parts) last.parts!.push(...parts);
      } else runs.push({ at, length: p.length, parts });
      at += p.length;
    }
    this.readRuns(cookie, runs, structured, done);
  }

  private readRuns(cookie: bigint, runs: Run[], structured: boolean, done: () => void): void {
    if (!structured) {
      this.send([P.simpleReply(0, cookie), ...runs.flatMap((r) => r.parts ?? zeroParts(r.length))], done);
      return;
    }
    const out: ReplyPart[] = [];
    runs.forEach((r, i) => {
      const flags = i === runs.length - 1 ? P.NBD_REPLY_FLAG_DONE : 0;
      if (!r.parts) {
        const b = P.structuredHeader(flags, P.NBD_REPLY_TYPE_OFFSET_HOLE, cookie, 12, 12);
        setBe64(b, P.STRUCTURED_HEADER_SIZE, r.at);
        setBe32(b, P.STRUCTURED_HEADER_SIZE + 8, r.length);
        out.push(b);
      } else {
        const b = P.structuredHeader(flags, P.NBD_REPLY_TYPE_OFFSET_DATA, cookie, 8 + r.length, 8);
        setBe64(b, P.STRUCTURED_HEADER_SIZE, r.at);
        out.push(b, ...r.parts);
      }
    });
    if (runs.length === 0) out.push(P.structuredHeader(P.NBD_REPLY_FLAG_DONE, P.NBD_REPLY_TYPE_NONE, cookie, 0));
    this.send(out, done);
  }

  /** One BLOCK_STATUS chunk per context, descriptors merged by status, the last chunk DONE. */
  blockStatus(cookie: bigint, contexts: { id: number; name: string }[], extents: Extent[], reqOne: boolean, limit: number): void {
    const out = contexts.map((c, i) => {
      const descriptors: { length: number; status: number }[] = [];
      for (const e of extents) {
        const status = extentStatus(c.name, e);
        const last = descriptors[descriptors.length - 1];
        if (last && last.status === status) last.length += e.length;
        else if (descriptors.length < P.MAX_EXTENTS) descriptors.push({ length: e.length, status });
        else break;
      }
      const list = reqOne ? descriptors.slice(0, 1) : descriptors;
      if (reqOne) list[0].length = Math.min(list[0].length, limit);
      const length = 4 + 8 * list.length;
      const flags = i === contexts.length - 1 ? P.NBD_REPLY_FLAG_DONE : 0;
      const b = P.structuredHeader(flags, P.NBD_REPLY_TYPE_BLOCK_STATUS, cookie, length, length);
      setBe32(b, P.STRUCTURED_HEADER_SIZE, c.id);
      list.forEach((d, k) => {
        setBe32(b, P.STRUCTURED_HEADER_SIZE + 4 + 8 * k, d.length);
        setBe32(b, P.STRUCTURED_HEADER_SIZE + 8 + 8 * k, d.status);
      });
      return b;
    });
    this.send(out);
  }
}

/** `length` zero bytes as slices of one shared buffer. */
function zeroParts(length: number): Uint8Array[] {
  const parts: Uint8Array[] = [];
  for (let o = 0; o < length; o += ZEROES.byteLength) parts.push(ZEROES.subarray(0, Math.min(ZEROES.byteLength, length - o)));
  return parts;
}

/**
 * The read cut into data and hole runs: a hole is a run of MIN_HOLE-byte blocks (counted from
 * the start of the read) that are all zero, whether the image stores them or not; OFFSET_HOLE
 * only promises that the range reads as zeroes. Data blocks fail the check on their first bytes.
 */
function zeroRuns(offset: number, data: Buffer): { at: number; length: number; hole: boolean }[] {
  const runs: { at: number; length: number; hole: boolean }[] = [];
  for (let o = 0; o < data.byteLength; o += MIN_HOLE) {
    const n = Math.min(MIN_HOLE, data.byteLength - o);
    // The first and last bytes settle nearly every data block without a call into C++.
    const hole = n === MIN_HOLE && data[o] === 0 && data[o + n - 1] === 0 && ZERO_BLOCK.compare(data, o, o + n) === 0;
    const last = runs[runs.length - 1];
    if (last && last.hole === hole) last.length += n;
    else runs.push({ at: offset + o, length: n, hole });
  }
  return runs;
}
