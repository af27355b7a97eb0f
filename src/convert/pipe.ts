/**
 * convert to '-': the target format writes a new image in one pass to stdout (a pipe, a
 * terminal, a redirected file) without seeking, so only formats with createStream can do it
 * (vmdk streamOptimized). Memory stays bounded: the pipeline keeps a few chunks in flight and
 * the stream writer appends them in order as soon as they are compressed.
 */
import { BlockDevice } from '../block/device';
import { ImageError } from '../block/errors';
import { CreateOptions } from '../block/image';
import { findFormat } from '../formats/index';
import { FdSink } from '../io/sink';
import { copyDevice, CopyOptions } from './pipeline';

export const STDOUT_NAME = '-';
const STDOUT_FD = 1;

export async function writeStreamToStdout(
  device: BlockDevice,
  format: string,
  create: Omit<CreateOptions, 'size'>,
  copy: Omit<CopyOptions, 'targetIsZero'>,
): Promise<void> {
  const fmt = findFormat(format);
  if (!fmt.createStream) {
    throw new ImageError('UNSUPPORTED', `${format} images cannot be written to a pipe (vmdk with subformat=streamOptimized can)`, { file: STDOUT_NAME });
  }
  if (copy.targetHasBacking) throw new ImageError('UNSUPPORTED', 'an image written to a pipe cannot have a backing file', { file: STDOUT_NAME });
  const target = await fmt.createStream(new FdSink(STDOUT_FD, 'stdout'), { ...create, size: device.size });
  await copyDevice(device, target, { ...copy, targetIsZero: true });
  await target.finish();
}
