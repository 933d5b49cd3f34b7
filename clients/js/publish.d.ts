/** The Redis client shapes publish accepts: node-redis (xAdd, hGet) or ioredis (xadd, hget). */
export type RedisLike =
  | { xAdd(key: string, id: string, fields: Record<string, string>): Promise<string>; hGet(key: string, field: string): Promise<string | null | undefined> }
  | { xadd(key: string, id: string, ...fields: string[]): Promise<string | null>; hget(key: string, field: string): Promise<string | null> };

/** CRC-32/IEEE of the string's UTF-8 bytes. */
export function crc32(s: string): number;
/** The partition of topic among n: crc32(topic) % n. */
export function partition(topic: string, n: number): number;
/** XADD the event (data JSON-encoded) to <prefix>:{p}:in and return its ID. */
export function publish(redis: RedisLike, topic: string, data: unknown, options?: { prefix?: string; partitions?: number }): Promise<string>;
