/** The vmdk entry in the format registry: a sparse extent ("KDMV", or "COWD" to refuse clearly) or a text descriptor. */
import { ImageError } from '../../block/errors';
import { ImageFormat, StreamTarget } from '../../block/image';
import { be32 } from '../../io/bytes';
import * as C from './constants';
import { createVmdk, startStream, VMDK_CREATE_OPTIONS } from './create';
import { looksLikeDescriptor } from './descriptor';
import { VmdkImage } from './image';
import { measureVmdk } from './measure';

export const vmdk: ImageFormat = {
  name: 'vmdk',
  probe: (head) => (head.byteLength >= 4 && (be32(head, 0) === C.SPARSE_MAGIC || be32(head, 0) === C.COWD_MAGIC)) || looksLikeDescriptor(head),
  open: (filename, opts) => VmdkImage.open(filename, opts),
  create: createVmdk,
  createOptions: VMDK_CREATE_OPTIONS,
  measure: measureVmdk,
  async createStream(sink, opts): Promise<StreamTarget> {
    const name = opts.finalName ?? '-';
    if ((opts.options.subformat ?? 'monolithicSparse') !== 'streamOptimized') {
      throw new ImageError('INVALID_ARGUMENT', 'only subformat=streamOptimized vmdk images can be written to a pipe (add -o subformat=streamOptimized)', { file: name });
    }
    if (opts.backingFile) throw new ImageError('UNSUPPORTED', 'a vmdk written to a pipe cannot have a backing file', { file: name });
    const stream = await startStream(sink, name, opts);
    return {
      size: stream.size,
      clusterSize: stream.grainBytes,
      filename: name,
      needsCompressedWrites: true,
      write: (offset, data) => stream.writeData(offset, data),
      writeCompressed: (offset, data) => stream.writeData(offset, data, true),
      // Grains never written read as zeroes: nothing to do.
      writeZeroes: async () => undefined,
      finish: () => stream.finish(),
    };
  },
};
