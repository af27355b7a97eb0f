/**
 * A write-back cache of metadata tables (qcow2 L2 tables and refcount blocks, vmdk grain
 * tables): fixed-size buffers keyed by their host offset, least recently used evicted first.
 *
 * Ordering is the caller's business and is expressed with `beforeWriteback`: it runs before
 * any dirty table is written (on flush or eviction), so e.g. the L2 cache can flush the
 * refcount cache first and a crash never leaves an L2 entry pointing at an unrefcounted cluster.
 */
export interface TableCacheOptions {
  tableSize: number;
  /** Upper bound on cached tables; at least 2. */
  capacity: number;
  load(hostOffset: number, into: Uint8Array): Promise<void>;
  store(hostOffset: number, data: Uint8Array): Promise<void>;
  beforeWriteback?: () => Promise<void>;
}

interface Entry {
  data: Uint8Array;
  dirty: boolean;
  /** Pins keep an entry resident while a caller works on it across awaits. */
  pins: number;
}

export class TableCache {
  private readonly entries = new Map<number, Entry>(); // Map iteration order is our LRU order
  private readonly loading = new Map<number, Promise<Entry>>();

  constructor(private readonly opts: TableCacheOptions) {
    if (opts.capacity < 2) opts.capacity = 2;
  }

  /** Returns the table at hostOffset, loading it if needed. The buffer stays valid until the next await. */
  async get(hostOffset: number): Promise<Uint8Array> {
    return (await this.entry(hostOffset)).data;
  }

  /** Runs fn with the table pinned (not evicted) for its whole duration. */
  async with<T>(hostOffset: number, fn: (table: Uint8Array) => Promise<T> | T): Promise<T> {
    const e = await this.entry(hostOffset);
    e.pins++;
    try {
      return await fn(e.data);
    } finally {
      e.pins--;
    }
  }

  /** Installs a table without reading it (a freshly allocated, zero-filled table). */
  async create(hostOffset: number): Promise<Uint8Array> {
    await this.makeRoom();
    const e: Entry = { data: new Uint8Array(this.opts.tableSize), dirty: true, pins: 0 };
    this.entries.set(hostOffset, e);
    return e.data;
  }

  markDirty(hostOffset: number): void {
    const e = this.entries.get(hostOffset);
    if (!e) throw new Error(`table cache: markDirty on absent table 0x${hostOffset.toString(16)}`);
    e.dirty = true;
  }

  get hasDirty(): boolean {
    for (const e of this.entries.values()) if (e.dirty) return true;
    return false;
  }

  /** Writes every dirty table, in host-offset order. */
  async flush(): Promise<void> {
    const dirty = [...this.entries].filter(([, e]) => e.dirty).sort((a, b) => a[0] - b[0]);
    if (dirty.length === 0) return;
    if (this.opts.beforeWriteback) await this.opts.beforeWriteback();
    for (const [off, e] of dirty) {
      if (!e.dirty) continue;
      e.dirty = false;
      try {
        await this.opts.store(off, e.data);
      } catch (err) {
        e.dirty = true;
        throw err;
      }
    }
  }

  /** Drops a table (it was freed); its dirty contents are discarded. */
  forget(hostOffset: number): void {
    this.entries.delete(hostOffset);
  }

  /** Drops every clean table, e.g. after metadata was rewritten behind the cache's back. */
  async clear(): Promise<void> {
    await this.flush();
    this.entries.clear();
  }

  private async entry(hostOffset: number): Promise<Entry> {
    const hit = this.entries.get(hostOffset);
    if (hit) {
      this.entries.delete(hostOffset);
      this.entries.set(hostOffset, hit);
      return hit;
    }
    let pending = this.loading.get(hostOffset);
    if (!pending) {
      pending = (async () => {
        const data = new Uint8Array(this.opts.tableSize);
        await this.opts.load(hostOffset, data);
        await this.makeRoom();
        const e: Entry = { data, dirty: false, pins: 0 };
        this.entries.set(hostOffset, e);
        return e;
      })();
      this.loading.set(hostOffset, pending);
      pending.then(
        () => this.loading.delete(hostOffset),
        () => this.loading.delete(hostOffset),
      );
    }
    return pending;
  }

  private async makeRoom(): Promise<void> {
    while (this.entries.size >= this.opts.capacity) {
      let victim: number | undefined;
      for (const [off, e] of this.entries) {
        if (e.pins === 0) {
          victim = off;
          break;
        }
      }
      if (victim === undefined) return; // everything pinned: grow past capacity briefly
      const e = this.entries.get(victim)!;
      if (e.dirty) {
        if (this.opts.beforeWriteback) await this.opts.beforeWriteback();
        if (e.dirty) {
          e.dirty = false;
          await this.opts.store(victim, e.data);
        }
      }
      if (e.pins === 0 && !e.dirty) this.entries.delete(victim);
    }
  }
}
