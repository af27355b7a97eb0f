/**
 * Reading through a backing image, for formats whose unallocated ranges show the layer below:
 * past the end of a shorter backing image (or with none open) the range reads as zeroes.
 */
import { BlockDevice, Extent } from './device';
import { pushExtent } from './extents';

/** Fills `into` with the backing image's bytes at `offset`, zeroes where it has none. */
export async function readBacking(backing: BlockDevice | null, offset: number, into: Uint8Array): Promise<void> {
  const inside = backing ? Math.max(0, Math.min(into.byteLength, backing.size - offset)) : 0;
  if (backing && inside > 0) await backing.read(offset, into.subarray(0, inside));
  into.fill(0, inside);
}

/** Appends to `out` the extents of [offset, offset+length) as the backing image has them, one layer deeper. */
export async function backingStatus(backing: BlockDevice, offset: number, length: number, out: Extent[]): Promise<void> {
  const inside = Math.max(0, Math.min(length, backing.size - offset));
  if (inside > 0) for (const e of await backing.blockStatus(offset, inside)) pushExtent(out, { ...e, depth: e.depth + 1 });
  pushExtent(out, { offset: offset + inside, length: length - inside, kind: 'zero', depth: 1, pastBackingEnd: true });
}
