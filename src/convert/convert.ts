/**
 * convert, file to file: opens the source (and its backing chain, or one of its internal
 * snapshots), creates the target under a temporary name — or opens it as is with `noCreate` —
 * runs the copy pipeline and only then gives the target its final name.
 */
import { BlockDevice } from '../block/device';
import { ImageError } from '../block/errors';
import { CreateOptions, Image, SnapshotSelector } from '../block/image';
import { openImage, resolveBackingName } from '../formats/index';
import { layerDepth, openBackingFile } from '../snapshot/chain';
import { isNbdUri } from '../nbd/uri';
import { STDOUT_NAME, writeStreamToStdout } from './pipe';
import { copyDevice, CopyOptions } from './pipeline';
import { stageTarget } from './target';

export interface ConvertRequest {
  source: string;
  /** Source format; probed when absent. */
  sourceFormat?: string;
  target: string;
  /** Target format (default raw). */
  targetFormat?: string;
  /** Target creation options, as with -o (e.g. { compression_type: 'zstd' }). */
  options?: Record<string, string>;
  /** Write into an existing target instead of creating one (convert -n). */
  noCreate?: boolean;
  /** Copy this internal snapshot of the source instead of its active layer (convert -l). */
  snapshot?: SnapshotSelector;
  /**
   * Give the target this backing file (convert -B), named relative to the target's directory:
   * only what differs from it is copied. When it is a layer of the source's own chain, what
   * that layer and those below it hold is skipped unread (as qemu-img does); otherwise the
   * source is compared with it.
   */
  backingFile?: string;
  backingFormat?: string;
  compress?: boolean;
  sparseSize?: number;
  inFlight?: number;
  onProgress?: CopyOptions['onProgress'];
}

/** A read-only view of an image's internal snapshot (convert -l, measure -l). */
export async function openSnapshotOf(image: Image, snapshot: SnapshotSelector): Promise<BlockDevice> {
  if (!image.openSnapshot) {
    throw new ImageError('UNSUPPORTED', `reading internal snapshots of ${image.format} images is not supported`, { file: image.filename });
  }
  return image.openSnapshot(snapshot);
}

/** Opens what convert reads: the source's active layer, or one of its snapshots. */
async function openSource(req: ConvertRequest): Promise<{ image: Image; device: BlockDevice; close(): Promise<void> }> {
  const image = await openImage(req.source, { format: req.sourceFormat, readOnly: true });
  if (req.snapshot === undefined) return { image, device: image, close: () => image.close() };
  let device: BlockDevice;
  try {
    device = await openSnapshotOf(image, req.snapshot);
  } catch (err) {
    await image.close();
    throw err;
  }
  return {
    image,
    device,
    close: async () => {
      await device.close();
      await image.close();
    },
  };
}

/**
 * Creates `target` (under a temporary name until complete) with the device's size and copies
 * the device into it.
 */
export async function writeNewImage(
  device: BlockDevice,
  target: string,
  format: string,
  create: Omit<CreateOptions, 'size'>,
  copy: Omit<CopyOptions, 'targetIsZero'> = {},
): Promise<void> {
  const staged = await stageTarget(format, target, { ...create, size: device.size });
  try {
    await copyDevice(device, staged.image, { ...copy, targetIsZero: true });
  } catch (err) {
    throw await staged.abort(err);
  }
  await staged.commit();
}

/**
 * What the target's backing file (-B) stands for: one of the source's layers (its depth in
 * the source's chain, with the same format), or else an image of its own to compare with.
 */
async function backingPlan(image: Image, req: ConvertRequest): Promise<{ copy: Pick<CopyOptions, 'backingDepth' | 'backing'>; close(): Promise<void> }> {
  if (req.backingFile === undefined || isNbdUri(req.target) || req.target === STDOUT_NAME) return { copy: {}, close: async () => undefined };
  const depth = await layerDepth(image, resolveBackingName(req.target, req.backingFile), req.backingFormat);
  if (depth !== undefined) return { copy: { backingDepth: depth }, close: async () => undefined };
  const backing = await openBackingFile(req.target, req.backingFile, req.backingFormat);
  return { copy: { backing }, close: () => backing.close() };
}

export async function convertImage(req: ConvertRequest): Promise<void> {
  const source = await openSource(req);
  try {
    const targetFormat = req.targetFormat ?? 'raw';
    const plan = await backingPlan(source.image, req);
    try {
      await convertInto(source.device, req, targetFormat, {
        compress: req.compress,
        sparseSize: req.sparseSize,
        inFlight: req.inFlight,
        targetHasBacking: req.backingFile !== undefined,
        onProgress: req.onProgress,
        ...plan.copy,
      });
    } finally {
      await plan.close();
    }
  } finally {
    await source.close();
  }
}

async function convertInto(device: BlockDevice, req: ConvertRequest, targetFormat: string, copy: Omit<CopyOptions, 'targetIsZero'>): Promise<void> {
  // An NBD export cannot be created: it is written in place, as qemu-img does.
  if (req.noCreate || isNbdUri(req.target)) {
    const target = await openImage(req.target, { format: targetFormat, readOnly: false });
    try {
      // The existing target's own backing file stands for nothing: every range is written, unless -B says what it holds.
      await copyDevice(device, target, { ...copy, targetIsZero: false });
      await target.flush();
    } finally {
      await target.close();
    }
    return;
  }
  const create = { options: req.options ?? {}, backingFile: req.backingFile, backingFormat: req.backingFormat, sourceName: req.source };
  if (req.target === STDOUT_NAME) await writeStreamToStdout(device, targetFormat, create, copy);
  else await writeNewImage(device, req.target, targetFormat, create, copy);
}
