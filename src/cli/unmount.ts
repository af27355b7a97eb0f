/**
 * img unmount DIR
 * Undoes `img mount` at DIR completely: the guest filesystem, the loop device, the FUSE
 * export; waits until the serving img has flushed and closed the image. Cleans up after an
 * img that was killed.
 */
import { Command } from 'commander';
import { unmountDir } from '../fuse/unmount';
import { action } from './command';

export function register(program: Command): void {
  program
    .command('unmount')
    .alias('umount')
    .description('undo img mount at DIR (also after a killed img)')
    .argument('<dir>')
    .action(
      action(1, async ({ args }) => {
        await unmountDir(args[0]);
      }),
    );
}
