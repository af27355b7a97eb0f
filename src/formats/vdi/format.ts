/** The vdi entry in the format registry. */
import { ImageFormat } from '../../block/image';
import { createVdi, VDI_CREATE_OPTIONS } from './create';
import { isVdi } from './header';
import { VdiImage } from './image';
import { measureVdi } from './measure';

export const vdi: ImageFormat = {
  name: 'vdi',
  probe: isVdi,
  open: (filename, opts) => VdiImage.open(filename, opts),
  create: createVdi,
  createOptions: VDI_CREATE_OPTIONS,
  measure: measureVdi,
};
