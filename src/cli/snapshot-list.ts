/** The snapshot table as qemu prints it (bdrv_snapshot_dump): fixed-width columns, local time. */
import { SnapshotInfo } from '../block/image';
import { sizeToStr } from './text';

const pad2 = (n: number): string => String(n).padStart(2, '0');

export function snapshotHeader(): string {
  return `${'ID'.padEnd(10)}${'TAG'.padEnd(17)}${'VM SIZE'.padStart(8)}${'DATE'.padStart(20)}${'VM CLOCK'.padStart(13)}${'ICOUNT'.padStart(11)}`;
}

export function snapshotLine(s: SnapshotInfo): string {
  const d = new Date(s.dateSec * 1000);
  const date = `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  const secs = Math.floor(s.vmClockNsec / 1e9);
  const clock = `${pad2(Math.floor(secs / 3600))}:${pad2(Math.floor(secs / 60) % 60)}:${pad2(secs % 60)}.${String(Math.floor(s.vmClockNsec / 1e6) % 1000).padStart(3, '0')}`;
  const icount = s.icount === undefined ? '' : String(s.icount);
  return `${s.id.padEnd(9)} ${s.name.padEnd(16)} ${sizeToStr(s.vmStateSize).padStart(8)}${date.padStart(20)}${clock.padStart(13)}${icount.padStart(11)}`;
}
