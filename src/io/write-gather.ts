/**
 * Gathers the positional writes a file is asked for during one event-loop iteration and
 * issues each run of adjacent ones as a single pwritev: every write handed to the thread pool
 * costs a hand-off and wake-ups worth more than copying a few hundred KiB, and concurrent
 * requests often land next to each other (qcow2 allocates clusters in request order).
 * Writes are submitted in the loop's check phase (or earlier through submitPending), in the
 * order they were asked for, only neighbours in that order merged; a write overlapping one
 * still in progress waits for it, so overlapping writes land in the order they were asked for.
 */
import * as fs from 'node:fs';

/** Buffers per pwritev (well under IOV_MAX). */
const MAX_RUN = 64;

interface Pending {
  offset: number;
  data: Uint8Array;
  resolve: () => void;
  reject: (err: unknown) => void;
}

function pwritev(fd: number, bufs: Uint8Array[], pos: number): Promise<number> {
  return new Promise((resolve, reject) => fs.writev(fd, bufs, pos, (err, n) => (err ? reject(err) : resolve(n))));
}

interface InFlight {
  start: number;
  end: number;
  done: Promise<void>;
}

export class WriteGather {
  private queue: Pending[] = [];
  private scheduled = false;
  private readonly inFlight = new Set<InFlight>();

  constructor(private readonly fd: number) {}

  /** Writes all of `data` at `offset` (rejects with the system error). */
  write(offset: number, data: Uint8Array): Promise<void> {
    return new Promise((resolve, reject) => {
      this.queue.push({ offset, data, resolve, reject });
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => this.submitPending());
      }
    });
  }

  /** Hands every queued write to the thread pool now (before an operation that must follow them). */
  submitPending(): void {
    this.scheduled = false;
    const q = this.queue;
    this.queue = [];
    for (let i = 0; i < q.length; ) {
      let end = q[i].offset + q[i].data.byteLength;
      let j = i + 1;
      while (j < q.length && j - i < MAX_RUN && q[j].offset === end) end += q[j++].data.byteLength;
      const start = q[i].offset;
      const before = [...this.inFlight].filter((f) => f.start < end && start < f.end).map((f) => f.done);
      const run: InFlight = { start, end, done: this.writeRun(q.slice(i, j), before) };
      this.inFlight.add(run);
      void run.done.then(() => this.inFlight.delete(run));
      i = j;
    }
  }

  /** Writes a run after the overlapping writes `before`; never rejects (its callers' promises do). */
  private async writeRun(run: Pending[], before: Promise<void>[]): Promise<void> {
    try {
      if (before.length > 0) await Promise.all(before);
      const start = run[0].offset;
      // A short write leaves the rest to be written piece by piece.
      let at = start + (await pwritev(this.fd, run.map((w) => w.data), start));
      for (const w of run) {
        const end = w.offset + w.data.byteLength;
        while (at < end) at += await pwritev(this.fd, [w.data.subarray(at - w.offset)], at);
      }
    } catch (err) {
      for (const w of run) w.reject(err);
      return;
    }
    for (const w of run) w.resolve();
  }
}
