/**
 * Cluster codecs shared by the formats: raw deflate and zstd, with the parameters qemu's
 * qcow2 uses (block/qcow2-threads.c), and a small worker_threads pool so many concurrent
 * compressions use every core.
 *
 * Decompression is synchronous and tolerates trailing bytes after the stream: qcow2 only
 * knows a compressed cluster's size in 512-byte sectors.
 */
import * as os from 'node:os';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import * as zlib from 'node:zlib';
import * as zstd from 'zstd-napi/binding';

/** deflate: raw stream (qcow2); zlib: deflate with the zlib wrapper, as zlib's compress() (vmdk grains); zstd. */
export type CompressionType = 'deflate' | 'zlib' | 'zstd';

/** qemu: deflateInit2(Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY), raw stream. */
const DEFLATE_WINDOW_BITS = 12;
const DEFLATE_MEM_LEVEL = 9;

let zstdCCtx: zstd.CCtx | undefined;
let zstdDCtx: zstd.DCtx | undefined;

/**
 * Compresses `data`; returns null when the result would not be shorter than `limit` bytes
 * (the caller then stores the data uncompressed, as qemu does).
 */
export function compressSync(type: CompressionType, data: Uint8Array, limit: number): Uint8Array | null {
  if (type === 'deflate') {
    const out = zlib.deflateRawSync(data, {
      level: zlib.constants.Z_DEFAULT_COMPRESSION,
      windowBits: DEFLATE_WINDOW_BITS,
      memLevel: DEFLATE_MEM_LEVEL,
      strategy: zlib.constants.Z_DEFAULT_STRATEGY,
    });
    return out.byteLength < limit ? out : null;
  }
  if (type === 'zlib') {
    // zlib's compress(): Z_DEFAULT_COMPRESSION, 32 KiB window, zlib header and adler32.
    const out = zlib.deflateSync(data);
    return out.byteLength < limit ? out : null;
  }
  zstdCCtx ??= new zstd.CCtx();
  const out = Buffer.allocUnsafe(zstd.compressBound(data.byteLength));
  // Default parameters (level ZSTD_CLEVEL_DEFAULT), one frame, as qemu's ZSTD_compressStream2(ZSTD_e_end).
  const n = zstdCCtx.compress2(out, data);
  return n < limit ? out.subarray(0, n) : null;
}

/**
 * Decompresses one unit (a qcow2 cluster) of exactly `size` bytes from `src`, which may hold
 * trailing garbage after the stream. Throws an Error with a short reason on bad input.
 */
export function decompressSync(type: CompressionType, src: Uint8Array, size: number): Uint8Array {
  if (type === 'deflate') {
    let out: Buffer;
    try {
      // Z_SYNC_FLUSH: a stream cut short yields what it has, and the length check below decides.
      out = zlib.inflateRawSync(src, { windowBits: DEFLATE_WINDOW_BITS, finishFlush: zlib.constants.Z_SYNC_FLUSH, maxOutputLength: size });
    } catch (err) {
      throw new Error(`deflate stream is invalid (${(err as Error).message})`);
    }
    if (out.byteLength !== size) throw new Error(`deflate stream holds ${out.byteLength} bytes, expected ${size}`);
    return out;
  }
  if (type === 'zlib') {
    let out: Buffer;
    try {
      out = zlib.inflateSync(src, { maxOutputLength: size });
    } catch (err) {
      throw new Error(`zlib stream is invalid (${(err as Error).message})`);
    }
    if (out.byteLength !== size) throw new Error(`zlib stream holds ${out.byteLength} bytes, expected ${size}`);
    return out;
  }
  zstdDCtx ??= new zstd.DCtx();
  let frame: number;
  try {
    frame = zstd.findFrameCompressedSize(src);
  } catch (err) {
    throw new Error(`zstd frame is invalid (${(err as Error).message})`);
  }
  const out = Buffer.alloc(size);
  let n: number;
  try {
    n = zstdDCtx.decompress(out, src.subarray(0, frame));
  } catch (err) {
    throw new Error(`zstd frame is invalid (${(err as Error).message})`);
  }
  if (n !== size) throw new Error(`zstd frame holds ${n} bytes, expected ${size}`);
  return out;
}

interface Job {
  id: number;
  type: CompressionType;
  data: Uint8Array;
  /** The size the result must stay below. */
  limit: number;
}
interface Reply {
  id: number;
  out: Uint8Array | null;
  error?: string;
}

const WORKER_MARK = 'img-compress-worker';

/** A few threads running compressSync; requests go to the least busy one. */
export class CompressorPool {
  private readonly workers: { w: Worker; busy: number }[] = [];
  private readonly pending = new Map<number, { resolve: (v: Uint8Array | null) => void; reject: (e: Error) => void }>();
  private nextId = 1;

  constructor(private readonly threads = Math.max(1, Math.min(4, os.availableParallelism()))) {}

  compress(type: CompressionType, data: Uint8Array, limit: number): Promise<Uint8Array | null> {
    return this.run({ type, data, limit });
  }

  private run(job: Omit<Job, 'id'>): Promise<Uint8Array | null> {
    const slot = this.pick();
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      slot.busy++;
      if (slot.busy === 1) slot.w.ref();
      slot.w.postMessage({ id, ...job } satisfies Job);
    });
  }

  /** Stops the threads; pending requests fail. */
  async close(): Promise<void> {
    const ws = this.workers.splice(0);
    await Promise.all(ws.map((s) => s.w.terminate()));
  }

  private pick(): { w: Worker; busy: number } {
    if (this.workers.length < this.threads) {
      const idle = this.workers.find((s) => s.busy === 0);
      if (idle) return idle;
      const slot = { w: new Worker(__filename, { workerData: WORKER_MARK }), busy: 0 };
      slot.w.unref(); // idle workers never keep the process alive
      slot.w.on('message', (r: Reply) => {
        slot.busy--;
        if (slot.busy === 0) slot.w.unref();
        const p = this.pending.get(r.id);
        this.pending.delete(r.id);
        if (!p) return;
        if (r.error !== undefined) p.reject(new Error(r.error));
        else p.resolve(r.out);
      });
      // A thread that fails or exits takes the pool's pending requests with it (they are retried by no one).
      const fail = (err: Error) => {
        for (const p of this.pending.values()) p.reject(err);
        this.pending.clear();
        const i = this.workers.indexOf(slot);
        if (i >= 0) this.workers.splice(i, 1);
      };
      slot.w.on('error', fail);
      slot.w.on('exit', (code) => fail(new Error(`compression thread exited (code ${code})`)));
      this.workers.push(slot);
      return slot;
    }
    return this.workers.reduce((a, b) => (b.busy < a.busy ? b : a));
  }
}

let shared: CompressorPool | undefined;

/** The process-wide pool (threads are created on demand and never hold the process open). */
export function compressorPool(): CompressorPool {
  shared ??= new CompressorPool();
  return shared;
}

if (!isMainThread && workerData === WORKER_MARK && parentPort) {
  const port = parentPort;
  port.on('message', (job: Job) => {
    try {
      const out = compressSync(job.type, job.data, job.limit);
      const copy = out && new Uint8Array(out); // an own ArrayBuffer, so it can be transferred
      port.postMessage({ id: job.id, out: copy } satisfies Reply, copy ? [copy.buffer] : []);
    } catch (err) {
      port.postMessage({ id: job.id, out: null, error: (err as Error).message } satisfies Reply);
    }
  });
}
