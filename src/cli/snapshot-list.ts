/**
 * The snapshot table as qemu prints it (bdrv_snapshot_dump): fixed-width columns (padded by
 * bytes, as printf pads), local time; and a snapshot as qemu's JSON SnapshotInfo object.
 */
import { SnapshotInfo } from '../block/image';
import { QValue } from './qjson';
import { sizeToStr } from './text';

const pad2 = (n: number): string => String(n).padStart(2, '0');
/** printf's %-Ns: pads to N bytes of UTF-8, not N characters. */
const padBytes = (s: string, n: number): string => s + ' '.repeat(Math.max(0, n - Buffer.byteLength(s, 'utf8')));

/** A snapshot as qemu's QAPI SnapshotInfo (img info and img snapshot -l --output=json). */
export function snapshotJson(s: SnapshotInfo): QValue {
  return {
    id: s.id,
    name: s.name,
    'vm-state-size': s.vmStateSize,
    'date-sec': s.dateSec,
    'date-nsec': s.dateNsec,
    'vm-clock-sec': Math.floor(s.vmClockNsec / 1e9),
    'vm-clock-nsec': s.vmClockNsec % 1e9,
    icount: s.icount,
  };
}

export function snapshotHeader(): string {
  return `${'ID'.padEnd(10)}${'TAG'.padEnd(17)}${'VM SIZE'.padStart(8)}${'DATE'.padStart(20)}${'VM CLOCK'.padStart(13)}${'ICOUNT'.padStart(11)}`;
}

export function snapshotLine(s: SnapshotInfo): string {
  const d = new Date(s.dateSec * 1000);
  const date = `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  const secs = Math.floor(s.vmClockNsec / 1e9);
  const clock = `${pad2(Math.floor(secs / 3600))}:${pad2(Math.floor(secs / 60) % 60)}:${pad2(secs % 60)}.${String(Math.floor(s.vmClockNsec / 1e6) % 1000).padStart(3, '0')}`;
  const icount = s.icount === undefined ? '' : String(s.icount);
  return `${padBytes(s.id, 9)} ${padBytes(s.name, 16)} ${sizeToStr(s.vmStateSize).padStart(8)}${date.padStart(20)}${clock.padStart(13)}${icount.padStart(11)}`;
}
