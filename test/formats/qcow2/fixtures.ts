/** Shared helpers for the qcow2 tests: source images with data, zeroes and holes, and hashing through the library. */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { Image } from '../../../src/block/image';
import { prng, qemuCheck, randomBytes } from '../../helpers';
import * as assert from 'node:assert/strict';

export const KiB = 1024;
export const MiB = 1024 * KiB;

/**
 * A raw file of `size` bytes: random runs, runs of a repeated byte (compressible), zero runs
 * written as data, and holes, at 4 KiB granularity so every cluster size sees mixed clusters.
 */
export function makeRaw(file: string, size: number, seed: number): Buffer {
  const rand = prng(seed);
  const buf = Buffer.alloc(size);
  for (let off = 0; off < size; ) {
    const len = Math.min(size - off, (1 + (rand() % 48)) * 4 * KiB);
    const kind = rand() % 4;
    if (kind === 0) randomBytes(rand, len).copy(buf, off);
    else if (kind === 1) buf.fill(rand() & 0xff, off, off + len);
    off += len;
  }
  const fd = fs.openSync(file, 'w');
  fs.ftruncateSync(fd, size);
  // Leave all-zero 64 KiB blocks as holes.
  for (let off = 0; off < size; off += 64 * KiB) {
    const piece = buf.subarray(off, Math.min(size, off + 64 * KiB));
    if (piece.some((b) => b !== 0)) fs.writeSync(fd, piece, 0, piece.length, off);
  }
  fs.closeSync(fd);
  return buf;
}

/** sha256 of an image's whole virtual disk, read through the library in 1 MiB pieces, several at a time. */
export async function hashImage(img: Image, chunk = MiB): Promise<string> {
  const h = createHash('sha256');
  const pieces: Promise<Buffer>[] = [];
  for (let off = 0; off < img.size; off += chunk) {
    const b = Buffer.alloc(Math.min(chunk, img.size - off));
    pieces.push(img.read(off, b).then(() => b));
  }
  for (const p of pieces) h.update(await p);
  return h.digest('hex');
}

export function sha256(buf: Uint8Array): string {
  return createHash('sha256').update(buf).digest('hex');
}

/** qemu-img check finds nothing wrong: no errors, no corruptions, no leaks. */
export function assertClean(file: string): void {
  const { status, report } = qemuCheck(file);
  assert.equal(status, 0, `qemu-img check ${file}: ${JSON.stringify(report)}`);
  assert.equal(report['corruptions'] ?? 0, 0);
  assert.equal(report['leaks'] ?? 0, 0);
}
