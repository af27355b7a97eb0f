/** The deterministic operation stream shared by the crash writer and the crash test. */
import { prng, randomBytes } from '../helpers';

/** Whole-cluster writes use this size on formats without compression (a VDI block is larger). */
export const CRASH_CLUSTER = 64 * 1024;

export interface CrashOp {
  kind: 'write' | 'compressed' | 'zero' | 'discard' | 'flush';
  offset: number;
  length: number;
  data?: Uint8Array;
  mayUnmap?: boolean;
}

/** An endless stream of operations inside an image of `size` bytes. */
export function* crashOps(seed: number, size: number, clusterSize: number): Generator<CrashOp> {
  const rand = prng(seed);
  const sectors = size / 512;
  for (;;) {
    const r = rand() % 100;
    if (r < 8) {
      yield { kind: 'flush', offset: 0, length: 0 };
      continue;
    }
    if (r < 18) {
      const clusters = size / clusterSize;
      const offset = (rand() % clusters) * clusterSize;
      // Half compressible (repeated pattern), half random (stored uncompressed).
      const data = rand() % 2 ? Buffer.alloc(clusterSize, rand() & 0xff) : randomBytes(rand, clusterSize);
      yield { kind: 'compressed', offset, length: clusterSize, data };
      continue;
    }
    const start = rand() % sectors;
    const count = Math.min(1 + (rand() % 256), sectors - start);
    const offset = start * 512;
    const length = count * 512;
    if (r < 70) yield { kind: 'write', offset, length, data: randomBytes(rand, length) };
    else if (r < 85) yield { kind: 'zero', offset, length, mayUnmap: rand() % 2 === 0 };
    else yield { kind: 'discard', offset, length };
  }
}
