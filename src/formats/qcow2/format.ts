/** The qcow2 entry in the format registry. */
import { ImageFormat } from '../../block/image';
import { checkQcow2Path } from './check';
import { createQcow2, QCOW2_CREATE_OPTIONS } from './create';
import { isQcow2 } from './header';
import { Qcow2Image } from './image';
import { measureQcow2 } from './measure';

export const qcow2: ImageFormat = {
  name: 'qcow2',
  probe: isQcow2,
  open: (filename, opts) => Qcow2Image.open(filename, opts),
  create: createQcow2,
  createOptions: QCOW2_CREATE_OPTIONS,
  measure: measureQcow2,
  checkFile: checkQcow2Path,
};
