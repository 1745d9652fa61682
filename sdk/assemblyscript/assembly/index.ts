export * from "./route";
