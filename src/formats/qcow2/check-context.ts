/**
 * State shared by the steps of a qcow2 consistency check (check-walk, check-repair, check):
 * the image's layout as read from the file, the counters of qemu's BdrvCheckResult, and the
 * one-line messages, worded as qemu-img words them.
 */
import { HostFile } from '../../io/host-file';
import * as C from './constants';
import { Geometry, Qcow2Header } from './header';
import { RefcountArray } from './refcount-array';
import { SnapshotEntry } from './snapshot-table';

export type FixMode = 'none' | 'leaks' | 'all';

export interface CheckCounts {
  checkErrors: number;
  corruptions: number;
  leaks: number;
  corruptionsFixed: number;
  leaksFixed: number;
  totalClusters: number;
  allocatedClusters: number;
  fragmentedClusters: number;
  compressedClusters: number;
}

export function zeroCounts(): CheckCounts {
  return {
    checkErrors: 0,
    corruptions: 0,
    leaks: 0,
    corruptionsFixed: 0,
    leaksFixed: 0,
    totalClusters: 0,
    allocatedClusters: 0,
    fragmentedClusters: 0,
    compressedClusters: 0,
  };
}

export class CheckContext {
  readonly clusterSize: number;
  readonly hasDataFile: boolean;
  counts = zeroCounts();
  messages: string[] = [];

  constructor(
    readonly file: HostFile,
    readonly h: Qcow2Header,
    readonly g: Geometry,
    public fileSize: number,
    public snapshots: SnapshotEntry[],
    public snapshotsSize: number,
    public fix: FixMode,
  ) {
    this.clusterSize = g.clusterSize;
    this.hasDataFile = (h.incompatibleFeatures & C.INCOMPAT_DATA_FILE) !== 0n;
  }

  get fixErrors(): boolean {
    return this.fix === 'all';
  }

  get fixLeaks(): boolean {
    return this.fix !== 'none';
  }

  say(line: string): void {
    this.messages.push(line);
  }

  /** "Repairing" when errors are being fixed, else "ERROR": qemu's prefix for fixable problems. */
  get errorPrefix(): string {
    return this.fixErrors ? 'Repairing' : 'ERROR';
  }

  clusterOf(offset: number): number {
    return Math.floor(offset / this.clusterSize);
  }

  /**
   * Adds a reference to every cluster overlapping [offset, offset+size) (qemu's
   * qcow2_inc_refcounts_imrt). A range reaching a whole cluster or more past the end of the
   * file is a corruption and is not counted; a count at the width's maximum is an overflow.
   */
  incRefs(imrt: RefcountArray, offset: number, size: number): void {
    if (size <= 0) return;
    if (offset + size - this.fileSize >= this.clusterSize) {
      this.say(
        `ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x${offset.toString(16)} size 0x${size.toString(16)}`,
      );
      this.counts.corruptions++;
      return;
    }
    const last = this.clusterOf(offset + size - 1);
    for (let k = this.clusterOf(offset); k <= last; k++) {
      if (!imrt.increment(k)) {
        this.say(
          `ERROR: overflow cluster offset=0x${(k * this.clusterSize).toString(16)} (use img amend to increase refcount_bits, or img convert to make a clean copy)`,
        );
        this.counts.corruptions++;
      }
    }
  }
}
