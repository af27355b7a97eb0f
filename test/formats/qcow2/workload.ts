/** A mixed, seeded workload applied to an image and to an in-memory raw reference alike. */
import { Image } from '../../../src/block/image';
import { prng, randomBytes } from '../../helpers';

export interface WorkloadOptions {
  seed: number;
  /** Discard makes whole clusters read as zero (false for a v2 image over a backing file). */
  discardZeroes: boolean;
  compressed: boolean;
  rounds?: number;
}

/** Zeroes, in the reference, the whole clusters a discard of [off, off+len) drops. */
export function discardRef(ref: Buffer, cs: number, off: number, len: number): void {
  const end = off + len;
  const first = Math.ceil(off / cs) * cs;
  const last = end === ref.length ? Math.ceil(end / cs) * cs : Math.floor(end / cs) * cs;
  if (first < last) ref.fill(0, first, Math.min(last, ref.length));
}

export async function workload(img: Image, ref: Buffer, o: WorkloadOptions): Promise<void> {
  const rand = prng(o.seed);
  const cs = img.clusterSize;
  const size = img.size;
  const pick = (max: number) => rand() % Math.max(1, max);
  const write = async (off: number, data: Buffer) => {
    data.copy(ref, off);
    await img.write(off, data);
  };
  // A large unaligned write, then batches of concurrent random ones.
  await write(777, randomBytes(rand, Math.min(size - 777, 1536 * 1024)));
  for (let round = 0; round < (o.rounds ?? 6); round++) {
    const batch: Promise<void>[] = [];
    for (let i = 0; i < 8; i++) {
      const len = 1 + pick(Math.min(size, 3 * cs + 70000));
      const off = pick(size - len);
      const data = rand() % 3 === 0 ? Buffer.alloc(len, rand() & 0xff) : randomBytes(rand, len);
      data.copy(ref, off); // overlapping writes in one batch: apply in issue order, keep them disjoint
      batch.push(img.write(off, data));
      await batch[batch.length - 1];
    }
    await Promise.all(batch);
    const zoff = pick(size - 1);
    const zlen = 1 + pick(Math.min(size - zoff, 4 * cs + 5000));
    ref.fill(0, zoff, zoff + zlen);
    await img.writeZeroes(zoff, zlen, { mayUnmap: round % 2 === 0 });
    const doff = pick(size - 1);
    const dlen = 1 + pick(Math.min(size - doff, 5 * cs));
    if (o.discardZeroes) discardRef(ref, cs, doff, dlen);
    await img.discard(doff, dlen);
    if (o.compressed && img.writeCompressed) {
      const clusters = Math.floor(size / cs);
      const c = pick(clusters - 2);
      const data = Buffer.alloc(2 * cs);
      if (rand() % 2) randomBytes(rand, cs).copy(data); // incompressible: stored plainly
      data.fill(0x61 + round, cs, cs + cs / 2);
      data.copy(ref, c * cs);
      await img.writeCompressed(c * cs, data);
      // Partial overwrite of a compressed cluster: copy-on-write of compressed data.
      const p = randomBytes(rand, 100);
      p.copy(ref, c * cs + cs + 10);
      await img.write(c * cs + cs + 10, p);
    }
  }
}
