/**
 * Where a connection's replies go. A reply is a list of parts queued as one unit, so replies
 * to concurrent requests never interleave; `done` runs once its bytes have left for the kernel
 * (or the connection failed). Two ways out:
 * - StreamSink writes to the Node stream: TLS, and any stream without a descriptor.
 * - SpliceSink hands the parts to a native thread that splices file ranges from the page cache
 *   into the socket (native/splice_writer.cc): read replies cost no copy in user space.
 */
import { Socket } from 'node:net';
import { Duplex } from 'node:stream';
import { TLSSocket } from 'node:tls';
import { nativeSys } from '../io/native';
import { socketFd } from '../io/node-socket';

/** `length` bytes of the file open as `fd`, from `position`: sent without being read here. */
export interface FileRange {
  fd: number;
  position: number;
  length: number;
}

export type ReplyPart = Uint8Array | FileRange;

export interface ReplySink {
  /** The sink takes FileRange parts. */
  readonly files: boolean;
  send(parts: ReplyPart[], done?: () => void): void;
  /** Sends what is queued, then ends the stream. */
  end(): Promise<void>;
  /** Drops what is queued and closes the stream. */
  destroy(): void;
}

/**
 * A sink for the stream: SpliceSink for a plain socket with nothing left to write (unless
 * IMG_NBD_SPLICE=0), StreamSink otherwise: TLS needs the bytes, and a second writer would race
 * handshake bytes still queued in the stream.
 */
export function replySink(stream: Duplex): ReplySink {
  const fd = socketFd(stream);
  const plain = stream instanceof Socket && !(stream instanceof TLSSocket) && stream.writableLength === 0;
  if (plain && fd !== undefined && process.env.IMG_NBD_SPLICE !== '0') return new SpliceSink(stream, fd);
  return new StreamSink(stream);
}

export class StreamSink implements ReplySink {
  readonly files = false;
  private corked = false;

  constructor(private readonly stream: Duplex) {}

  /**
   * The stream stays corked until the event loop's check phase, so the replies of every
   * request completed in one loop iteration leave in one writev: each write to the socket
   * wakes the client, and a wake-up per reply costs more than the reply.
   */
  send(parts: ReplyPart[], done?: () => void): void {
    if (this.stream.destroyed) {
      done?.();
      return;
    }
    if (!this.corked) {
      this.corked = true;
      this.stream.cork();
      setImmediate(() => {
        this.corked = false;
        this.stream.uncork();
      });
    }
    parts.forEach((p, i) => {
      if (!(p instanceof Uint8Array)) throw new Error('StreamSink cannot send file ranges');
      this.stream.write(p, i === parts.length - 1 ? () => done?.() : undefined);
    });
  }

  async end(): Promise<void> {
    this.stream.end();
  }

  destroy(): void {
    this.stream.destroy();
  }
}

interface NativeSpliceWriter {
  /**
   * Units one after the other: token, part count, then each part as a Uint8Array or as fd,
   * position, length. Returns the tokens of units written at once (not reported later).
   */
  send(batch: (number | Uint8Array)[]): number[];
  end(): void;
  abort(): void;
}

type SpliceWriterClass = new (
  fd: number,
  onReport: (tokens: number[], error: string | undefined, closed: boolean) => void,
) => NativeSpliceWriter;

export class SpliceSink implements ReplySink {
  readonly files = true;
  private readonly writer: NativeSpliceWriter;
  /** Units queued, by token: the parts stay referenced here because the thread reads their memory. */
  private readonly pending = new Map<number, { parts: ReplyPart[]; done?: () => void }>();
  private next = 0;
  private closed = false;
  /** Units queued in this event-loop iteration, handed to the thread together in the check phase. */
  private batch: (number | Uint8Array)[] = [];
  private readonly finished: Promise<void>;

  constructor(
    private readonly socket: Socket,
    fd: number,
  ) {
    let close!: () => void;
    this.finished = new Promise((r) => (close = r));
    const Writer = (nativeSys() as unknown as { SpliceWriter: SpliceWriterClass }).SpliceWriter;
    this.writer = new Writer(fd, (tokens, error, closed) => {
      this.complete(tokens);
      // The client went away or the image could not be read mid-reply: nothing more can be sent.
      if (error !== undefined && !socket.destroyed) socket.destroy();
      if (closed) close();
    });
  }

  /** Waking the thread costs more than a small reply: a loop iteration's replies go to it at once. */
  send(parts: ReplyPart[], done?: () => void): void {
    if (this.closed || this.socket.destroyed) {
      done?.();
      return;
    }
    const token = this.next;
    this.next = (this.next + 1) >>> 0;
    this.pending.set(token, { parts, done });
    if (this.batch.length === 0) setImmediate(() => this.flush());
    this.batch.push(token, parts.length);
    for (const p of parts) {
      if (p instanceof Uint8Array) this.batch.push(p);
      else this.batch.push(p.fd, p.position, p.length);
    }
  }

  private flush(): void {
    if (this.batch.length === 0 || this.closed) return;
    const sent = this.writer.send(this.batch);
    this.batch = [];
    this.complete(sent);
  }

  private complete(tokens: number[]): void {
    for (const t of tokens) {
      const unit = this.pending.get(t);
      this.pending.delete(t);
      unit?.done?.();
    }
  }

  async end(): Promise<void> {
    this.stop(false);
    await this.finished;
    this.socket.end();
  }

  destroy(): void {
    this.stop(true);
    this.socket.destroy();
  }

  private stop(abort: boolean): void {
    if (this.closed) return;
    this.flush(); // aborted, the thread still reports these units (failed): their callers are waiting
    this.closed = true;
    if (abort) this.writer.abort();
    else this.writer.end();
  }
}
