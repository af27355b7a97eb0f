/**
 * A raw disk with what converters must get right: data at aligned and unaligned offsets,
 * runs of written zeroes (allocated in the file, zero in content), holes, a size that is not
 * a multiple of a cluster, and data in the last sector.
 */
import * as fs from 'node:fs';
import { prng, randomBytes } from '../helpers';

const MiB = 1 << 20;
export const SAMPLE_SIZE = 16 * MiB + 3 * 512;

/** Writes `data` at `offset` into an existing file without truncating it. */
export function writeAt(file: string, offset: number, data: Uint8Array): void {
  const fd = fs.openSync(file, 'r+');
  try {
    fs.writeSync(fd, data, 0, data.byteLength, offset);
  } finally {
    fs.closeSync(fd);
  }
}

export function makeSampleDisk(file: string, seed = 1, size = SAMPLE_SIZE): void {
  const rand = prng(seed);
  fs.writeFileSync(file, '');
  fs.truncateSync(file, size);
  writeAt(file, 0, randomBytes(rand, 64 * 1024)); // boot area
  writeAt(file, 70000, randomBytes(rand, 5000)); // unaligned, inside one cluster
  writeAt(file, 1 * MiB, Buffer.alloc(MiB)); // written zeroes
  writeAt(file, 3 * MiB - 4096, randomBytes(rand, 3 * 4096)); // crosses a cluster boundary
  const mixed = randomBytes(rand, 2 * MiB); // data with zero runs inside it
  mixed.fill(0, 256 * 1024, 768 * 1024);
  mixed.fill(0, 1024 * 1024, 1024 * 1024 + 4096);
  writeAt(file, 5 * MiB, mixed);
  writeAt(file, 12 * MiB, Buffer.from('x'.repeat(1000))); // text
  writeAt(file, size - 512, randomBytes(rand, 512)); // last sector
}
