export async function cleanupHosts(_c: unknown, _l: unknown): Promise<boolean> { return false; }
