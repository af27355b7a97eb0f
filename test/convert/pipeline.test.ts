/** The copy pipeline's parts: grid quantization, ordered issuing with bounded concurrency, copyDevice on real files. */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { describe, it } from 'node:test';
import { Extent } from '../../src/block/device';
import { gridRuns } from '../../src/convert/extent-grid';
import { OrderedPool } from '../../src/convert/ordered-pool';
import { copyDevice } from '../../src/convert/pipeline';
import { openImage } from '../../src/formats/index';
import { sha256File, tempDir } from '../helpers';
import { makeSampleDisk, SAMPLE_SIZE } from './sample-disk';

const ext = (offset: number, length: number, kind: Extent['kind']): Extent => ({ offset, length, kind, depth: 0 });

describe('gridRuns', () => {
  it('gives each grid block the strongest kind of its bytes and merges runs', () => {
    const runs = gridRuns([ext(0, 100, 'unallocated'), ext(100, 10, 'data'), ext(110, 290, 'zero'), ext(400, 112, 'unallocated')], 128, 512);
    assert.deepEqual(runs, [
      { offset: 0, length: 128, kind: 'data' },
      { offset: 128, length: 384, kind: 'zero' },
    ]);
  });

  it('keeps a short last block and whole-block extents as they are', () => {
    assert.deepEqual(gridRuns([ext(0, 256, 'data'), ext(256, 300, 'unallocated')], 128, 556), [
      { offset: 0, length: 256, kind: 'data' },
      { offset: 256, length: 300, kind: 'unallocated' },
    ]);
    assert.deepEqual(gridRuns([ext(0, 500, 'unallocated'), ext(500, 56, 'data')], 128, 556), [
      { offset: 0, length: 384, kind: 'unallocated' },
      { offset: 384, length: 172, kind: 'data' },
    ]);
  });
});

describe('OrderedPool', () => {
  it('issues in submission order whatever order preparation finishes in, with at most `limit` jobs', async () => {
    const pool = new OrderedPool(3);
    const issued: number[] = [];
    let running = 0;
    let peak = 0;
    for (let i = 0; i < 20; i++) {
      await pool.add({
        prepare: async () => {
          running++;
          peak = Math.max(peak, running);
          for (let k = 0; k < (i * 7) % 5; k++) await new Promise((r) => setImmediate(r));
        },
        issue: async () => {
          issued.push(i);
          await new Promise((r) => setImmediate(r));
          running--;
        },
      });
    }
    await pool.drain();
    assert.deepEqual(issued, [...Array(20).keys()]);
    assert.ok(peak <= 3, `peak ${peak}`);
  });

  it('with serialWrites, a job\'s writes finish before the next job\'s start', async () => {
    const pool = new OrderedPool(4, true);
    const events: string[] = [];
    for (let i = 0; i < 6; i++) {
      await pool.add({
        prepare: async () => undefined,
        issue: async () => {
          events.push(`start ${i}`);
          await new Promise((r) => setImmediate(r));
          events.push(`end ${i}`);
        },
      });
    }
    await pool.drain();
    assert.deepEqual(events, [...Array(6).keys()].flatMap((i) => [`start ${i}`, `end ${i}`]));
  });

  it('reports the first failure and issues nothing after it', async () => {
    const pool = new OrderedPool(4);
    const issued: number[] = [];
    await assert.rejects(async () => {
      for (let i = 0; i < 50; i++) {
        await pool.add({
          prepare: async () => {
            if (i === 5) throw new Error('read failed');
          },
          issue: async () => void issued.push(i),
        });
      }
      await pool.drain();
    }, /read failed/);
    await pool.drain().catch(() => undefined);
    assert.ok(!issued.includes(5) && issued.every((i) => i < 5 || i > 5));
    assert.ok(issued.length < 50);
  });
});

describe('copyDevice', () => {
  it('copies raw to raw with one request in flight and small chunks, holes left unwritten', async () => {
    const dir = tempDir();
    makeSampleDisk(`${dir}/src.raw`, 7);
    fs.writeFileSync(`${dir}/dst.raw`, '');
    fs.truncateSync(`${dir}/dst.raw`, SAMPLE_SIZE);
    const src = await openImage(`${dir}/src.raw`, { format: 'raw', readOnly: true });
    const dst = await openImage(`${dir}/dst.raw`, { format: 'raw' });
    const seen: number[] = [];
    try {
      await copyDevice(src, dst, { targetIsZero: true, inFlight: 1, chunkSize: 64 * 1024, onProgress: (done) => seen.push(done) });
    } finally {
      await src.close();
      await dst.close();
    }
    assert.equal(sha256File(`${dir}/dst.raw`), sha256File(`${dir}/src.raw`));
    assert.equal(seen[seen.length - 1], SAMPLE_SIZE);
    assert.ok(fs.statSync(`${dir}/dst.raw`).blocks * 512 < fs.statSync(`${dir}/src.raw`).blocks * 512);
  });
});
