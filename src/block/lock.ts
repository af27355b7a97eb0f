/** A FIFO async mutex: `run(fn)` executes fn when every earlier holder has finished. */
export class Mutex {
  private tail: Promise<void> = Promise.resolve();

  run<T>(fn: () => Promise<T> | T): Promise<T> {
    const result = this.tail.then(fn);
    this.tail = result.then(
      () => undefined,
      () => undefined,
    );
    return result;
  }
}

/**
 * Locks on integer keys (cluster indexes): a writer allocating a cluster holds its key so that
 * a second request for the same cluster waits instead of allocating it twice.
 */
export class KeyedLock {
  private readonly held = new Map<number, Promise<void>>();

  async acquire(keys: number[]): Promise<() => void> {
    const sorted = isSortedUnique(keys) ? keys.slice() : [...new Set(keys)].sort((a, b) => a - b);
    for (;;) {
      const busy: Promise<void>[] = [];
      for (const k of sorted) {
        const p = this.held.get(k);
        if (p) busy.push(p);
      }
      if (busy.length === 0) break;
      await Promise.all(busy);
    }
    let release!: () => void;
    const done = new Promise<void>((r) => (release = r));
    for (const k of sorted) this.held.set(k, done);
    return () => {
      for (const k of sorted) if (this.held.get(k) === done) this.held.delete(k);
      release();
    };
  }
}

/** Callers mostly pass ascending runs of cluster indexes, which need no sorting. */
function isSortedUnique(keys: number[]): boolean {
  for (let i = 1; i < keys.length; i++) if (keys[i] <= keys[i - 1]) return false;
  return true;
}

/**
 * A readers-writer lock: many shared holders at once, or one exclusive holder. A waiting
 * exclusive holder blocks new shared ones, so it is never starved by a stream of readers.
 */
export class RwLock {
  private readers = 0;
  private writer = false;
  private readonly queue: { exclusive: boolean; go: () => void }[] = [];

  async shared<T>(fn: () => Promise<T> | T): Promise<T> {
    await this.lock(false);
    try {
      return await fn();
    } finally {
      this.readers--;
      this.pump();
    }
  }

  async exclusive<T>(fn: () => Promise<T> | T): Promise<T> {
    await this.lock(true);
    try {
      return await fn();
    } finally {
      this.writer = false;
      this.pump();
    }
  }

  private lock(exclusive: boolean): Promise<void> {
    if (!this.writer && this.queue.length === 0 && (!exclusive || this.readers === 0)) {
      if (exclusive) this.writer = true;
      else this.readers++;
      return Promise.resolve();
    }
    return new Promise((go) => this.queue.push({ exclusive, go }));
  }

  private pump(): void {
    while (this.queue.length > 0 && !this.writer) {
      const next = this.queue[0];
      if (next.exclusive) {
        if (this.readers > 0) return;
        this.writer = true;
      } else this.readers++;
      this.queue.shift();
      next.go();
    }
  }
}
