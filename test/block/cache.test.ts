import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { TableCache } from '../../src/block/cache';
import { KeyedLock, Mutex } from '../../src/block/lock';

/** A table store in memory: the cache is tested against real reads and writes of bytes. */
function store() {
  const tables = new Map<number, Uint8Array>();
  const writes: number[] = [];
  return {
    tables,
    writes,
    load: async (off: number, into: Uint8Array) => into.set(tables.get(off) ?? new Uint8Array(into.byteLength)),
    store: async (off: number, data: Uint8Array) => {
      writes.push(off);
      tables.set(off, Uint8Array.from(data));
    },
  };
}

test('TableCache writes dirty tables back on eviction and flush, after beforeWriteback', async () => {
  const s = store();
  const order: string[] = [];
  const cache = new TableCache({
    tableSize: 16,
    capacity: 2,
    load: s.load,
    store: async (o, d) => {
      order.push(`store ${o}`);
      await s.store(o, d);
    },
    beforeWriteback: async () => {
      order.push('before');
    },
  });
  (await cache.get(0))[0] = 1;
  cache.markDirty(0);
  (await cache.get(16))[0] = 2;
  cache.markDirty(16);
  await cache.get(32); // evicts table 0, the least recently used
  assert.deepEqual(order, ['before', 'store 0']);
  assert.equal(s.tables.get(0)![0], 1);
  await cache.flush();
  assert.deepEqual(order, ['before', 'store 0', 'before', 'store 16']);
  assert.equal((await cache.get(0))[0], 1, 'evicted table reloads with its contents');
});

test('TableCache never evicts a pinned table', async () => {
  const s = store();
  const cache = new TableCache({ tableSize: 8, capacity: 2, load: s.load, store: s.store });
  await cache.with(0, async (t) => {
    t[0] = 9;
    cache.markDirty(0);
    await cache.get(8);
    await cache.get(16);
    await cache.get(24);
    t[1] = 7; // still the cached buffer
  });
  await cache.flush();
  assert.deepEqual([...s.tables.get(0)!.subarray(0, 2)], [9, 7]);
});

test('Mutex runs holders one at a time in order; KeyedLock serializes equal keys only', async () => {
  const m = new Mutex();
  const seen: number[] = [];
  await Promise.all(
    [3, 1, 2].map((d, i) =>
      m.run(async () => {
        await new Promise((r) => setTimeout(r, d));
        seen.push(i);
      }),
    ),
  );
  assert.deepEqual(seen, [0, 1, 2]);

  const k = new KeyedLock();
  const events: string[] = [];
  const a = await k.acquire([1, 2]);
  const b = k.acquire([2, 3]).then((rel) => (events.push('b'), rel));
  const c = k.acquire([4]).then((rel) => (events.push('c'), rel));
  (await c)();
  assert.deepEqual(events, ['c']);
  a();
  (await b)();
  assert.deepEqual(events, ['c', 'b']);
});
