/**
 * A write-back cache of metadata tables (qcow2 L2 tables and refcount blocks, vmdk grain
 * tables): fixed-size buffers keyed by their host offset, least recently used evicted first.
 *
 * Ordering is the caller's business and is expressed with `beforeWriteback`: it runs before
 * any dirty table is written (on flush or eviction), so e.g. the L2 cache can flush the
 * refcount cache first and a crash never leaves an L2 entry pointing at an unrefcounted cluster.
 * What gets written is a copy of each table taken BEFORE beforeWriteback runs: a change made
 * while it runs (say an L2 entry for a cluster allocated meanwhile, whose refcount that
 * beforeWriteback did not cover) stays in the cache, dirty, for the next writeback.
 */
export interface TableCacheOptions {
  tableSize: number;
  /** Upper bound on cached tables; at least 2. */
  capacity: number;
  load(hostOffset: number, into: Uint8Array): Promise<void>;
  store(hostOffset: number, data: Uint8Array): Promise<void>;
  beforeWriteback?: () => Promise<void>;
}

interface Copy {
  off: number;
  data: Uint8Array;
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
  /** Writebacks under way (flush waits for evictions' too). */
  private readonly storing = new Set<Promise<void>>();

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

  /** Writes every dirty table, in host-offset order; returns once every write (evictions' too) is done. */
  async flush(): Promise<void> {
    const dirty = [...this.entries].filter(([, e]) => e.dirty).sort((a, b) => a[0] - b[0]);
    if (dirty.length > 0) await this.writeBack(dirty.map(([off, e]) => this.takeDirty(off, e)));
    while (this.storing.size > 0) await Promise.all([...this.storing]);
  }

  /** A copy of a dirty table's contents to write; the table counts as clean from now on. */
  private takeDirty(off: number, e: Entry): Copy {
    e.dirty = false;
    return { off, data: e.data.slice() };
  }

  /** beforeWriteback, then the copies in order; what was not written is dirty again on failure. */
  private async writeBack(copies: Copy[]): Promise<void> {
    let done = 0;
    const work = (async () => {
      if (this.opts.beforeWriteback) await this.opts.beforeWriteback();
      for (; done < copies.length; done++) await this.opts.store(copies[done].off, copies[done].data);
    })();
    this.storing.add(work);
    try {
      await work;
    } catch (err) {
      for (const c of copies.slice(done)) {
        const e = this.entries.get(c.off);
        if (e) e.dirty = true;
      }
      throw err;
    } finally {
      this.storing.delete(work);
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
      if (e.dirty) await this.writeBack([this.takeDirty(victim, e)]);
      if (e.pins === 0 && !e.dirty && this.entries.get(victim) === e) this.entries.delete(victim);
    }
  }
}
