import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as zlib from 'node:zlib';
import { compressSync, compressorPool, CompressorPool, decompressSync } from '../../src/block/compress';
import { prng, randomBytes } from '../helpers';

const CLUSTER = 65536;

function compressible(seed: number): Buffer {
  const b = Buffer.alloc(CLUSTER);
  const rand = prng(seed);
  for (let i = 0; i < b.length; i += 64) b.fill(rand() % 7, i, i + 64);
  return b;
}

for (const type of ['deflate', 'zstd'] as const) {
  test(`${type}: round trip, trailing bytes after the stream are ignored`, () => {
    const data = compressible(1);
    const packed = compressSync(type, data, CLUSTER);
    assert.ok(packed && packed.byteLength < CLUSTER / 4);
    // qcow2 stores whole 512-byte sectors: pad with junk as the next compressed cluster would.
    const padded = Buffer.concat([packed, Buffer.alloc(511, 0x5a)]);
    assert.ok(Buffer.from(decompressSync(type, padded, CLUSTER)).equals(data));
  });

  test(`${type}: incompressible data is refused, corrupt input is an error`, () => {
    assert.equal(compressSync(type, randomBytes(prng(2), CLUSTER), CLUSTER), null);
    const packed = compressSync(type, compressible(3), CLUSTER)!;
    assert.throws(() => decompressSync(type, packed.subarray(0, packed.byteLength >> 1), CLUSTER), /expected|invalid/);
    assert.throws(() => decompressSync(type, Buffer.alloc(100, 0xff), CLUSTER), /invalid|expected/);
    // A stream that inflates to more than a cluster is refused, not allocated.
    assert.throws(() => decompressSync(type, compressSync(type, Buffer.alloc(4 * CLUSTER), 4 * CLUSTER)!, CLUSTER));
  });
}

test('deflate uses the raw format with a 4 KiB window, as qemu does', () => {
  const data = compressible(4);
  const packed = compressSync('deflate', data, CLUSTER)!;
  assert.ok(zlib.inflateRawSync(packed, { windowBits: 12 }).equals(data));
});

test('the pool compresses many clusters concurrently with the same results as compressSync', async () => {
  const pool = new CompressorPool(2);
  try {
    const inputs = Array.from({ length: 64 }, (_, i) => (i % 5 === 0 ? randomBytes(prng(i + 9), CLUSTER) : compressible(i + 9)));
    for (const type of ['deflate', 'zstd'] as const) {
      const outs = await Promise.all(inputs.map((d) => pool.compress(type, d, CLUSTER)));
      outs.forEach((o, i) => {
        const want = compressSync(type, inputs[i], CLUSTER);
        if (want === null) assert.equal(o, null);
        else assert.ok(o && Buffer.from(decompressSync(type, o, CLUSTER)).equals(inputs[i]));
      });
    }
  } finally {
    await pool.close();
  }
  // The shared pool does not keep the process alive once idle.
  assert.ok(await compressorPool().compress('deflate', compressible(1), CLUSTER));
});
