/**
 * convert, file to file: opens the source (and its backing chain, or one of its internal
 * snapshots), creates the target under a temporary name — or opens it as is with `noCreate` —
 * runs the copy pipeline and only then gives the target its final name.
 */
import { BlockDevice } from '../block/device';
import { ImageError } from '../block/errors';
import { CreateOptions, Image } from '../block/image';
import { openImage } from '../formats/index';
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
  snapshot?: string;
  /** Give the target this backing file (convert -B): only what differs from it is copied. */
  backingFile?: string;
  backingFormat?: string;
  compress?: boolean;
  sparseSize?: number;
  inFlight?: number;
  onProgress?: CopyOptions['onProgress'];
}

/** A read-only view of an image's internal snapshot (convert -l, measure -l). */
export async function openSnapshotOf(image: Image, idOrName: string): Promise<BlockDevice> {
  if (!image.openSnapshot) {
    throw new ImageError('UNSUPPORTED', `reading internal snapshots of ${image.format} images is not supported`, { file: image.filename });
  }
  return image.openSnapshot(idOrName);
}

/** Opens what convert reads: the source's active layer, or one of its snapshots. */
async function openSource(req: ConvertRequest): Promise<{ device: BlockDevice; close(): Promise<void> }> {
  const image = await openImage(req.source, { format: req.sourceFormat, readOnly: true });
  if (req.snapshot === undefined) return { device: image, close: () => image.close() };
  let device: BlockDevice;
  try {
    device = await openSnapshotOf(image, req.snapshot);
  } catch (err) {
    await image.close();
    throw err;
  }
  return {
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

export async function convertImage(req: ConvertRequest): Promise<void> {
  const source = await openSource(req);
  try {
    const targetFormat = req.targetFormat ?? 'raw';
    const copy: Omit<CopyOptions, 'targetIsZero'> = {
      compress: req.compress,
      sparseSize: req.sparseSize,
      inFlight: req.inFlight,
      targetHasBacking: req.backingFile !== undefined,
      onProgress: req.onProgress,
    };
    if (req.noCreate) {
      const target = await openImage(req.target, { format: targetFormat, readOnly: false });
      try {
        await copyDevice(source.device, target, { ...copy, targetIsZero: false, targetHasBacking: target.backing !== null });
        await target.flush();
      } finally {
        await target.close();
      }
      return;
    }
    await writeNewImage(source.device, req.target, targetFormat, { options: req.options ?? {}, backingFile: req.backingFile, backingFormat: req.backingFormat }, copy);
  } finally {
    await source.close();
  }
}
