/**
 * img check for vmdk: every grain directory and grain table entry of every sparse extent is
 * followed and checked (inside the file, past the metadata, not shared by two grains; for
 * compressed grains the marker's LBA and size and the zlib stream too), and each redundant
 * grain table is compared with its primary. Repair (-r all) only rewrites a redundant table
 * that differs from a valid primary: nothing else can be fixed without guessing. Like
 * qemu-img, the report carries no cluster counts for vmdk.
 */
import { CheckReport, RepairMode } from '../../block/image';
import { le32 } from '../../io/bytes';
import * as C from './constants';
import type { VmdkImage } from './image';
import { SparseExtent } from './sparse-extent';

export async function checkVmdk(image: VmdkImage, repair?: RepairMode): Promise<CheckReport> {
  const report: CheckReport = { filename: image.filename, format: 'vmdk', checkErrors: 0, corruptions: 0, leaks: 0, corruptionsFixed: 0, leaksFixed: 0, messages: [] };
  for (const extent of image.extents) {
    if (extent instanceof SparseExtent) await checkExtent(extent, report, repair === 'all');
  }
  return report;
}

async function checkExtent(e: SparseExtent, r: CheckReport, fix: boolean): Promise<void> {
  const name = e.file.path;
  const corrupt = (msg: string) => {
    r.corruptions++;
    r.messages.push(`ERROR ${name}: ${msg}`);
  };
  const grains = Math.ceil(e.size / e.grainBytes);
  // Which sectors hold a grain already: two entries sharing one would corrupt each other.
  const used = new Uint8Array(Math.ceil(e.end / C.SECTOR / 8) + 1);
  const claim = (sector: number): boolean => {
    const bit = 1 << (sector & 7);
    const had = (used[sector >> 3] & bit) !== 0;
    used[sector >> 3] |= bit;
    return had;
  };
  const table = new Uint8Array(e.gtes * 4);
  const copy = new Uint8Array(e.gtes * 4);
  for (let i = 0; i < e.gd.length; i++) {
    const gt = e.gd[i];
    if (gt === 0) continue;
    if (gt * C.SECTOR + e.gtBytes > e.end || gt < 1) {
      corrupt(`grain directory entry ${i} points to sector ${gt}, outside the file`);
      continue;
    }
    await e.file.read(gt * C.SECTOR, table);
    for (let j = 0; j < e.gtes; j++) {
      const grain = i * e.gtes + j;
      const entry = le32(table, j * 4);
      if (entry === 0 || grain >= grains) continue;
      if (entry === C.GTE_ZEROED && e.zeroGrain) continue;
      if (entry < e.header.overHead || entry * C.SECTOR >= e.end) {
        corrupt(`grain ${grain} points to sector ${entry}, outside the grain area`);
        continue;
      }
      if (claim(entry)) {
        corrupt(`grain ${grain} points to sector ${entry}, which another grain uses too`);
        continue;
      }
      if (e.compressed) {
        try {
          await e.readCompressedGrain(grain, entry * C.SECTOR);
        } catch (err) {
          corrupt(`grain ${grain}: ${(err as Error).message.replace(`${name}: `, '')}`);
        }
      }
    }
    const backup = e.rgd?.[i];
    if (!backup) continue;
    if (backup * C.SECTOR + e.gtBytes > e.end) {
      corrupt(`redundant grain directory entry ${i} points to sector ${backup}, outside the file`);
      continue;
    }
    await e.file.read(backup * C.SECTOR, copy);
    if (Buffer.compare(table, copy) !== 0) {
      corrupt(`redundant grain table ${i} (sector ${backup}) differs from grain table ${i} (sector ${gt})`);
      if (fix) {
        await e.file.write(backup * C.SECTOR, table);
        r.corruptionsFixed++;
      }
    }
  }
  if (fix && r.corruptionsFixed > 0) await e.file.flush();
}
