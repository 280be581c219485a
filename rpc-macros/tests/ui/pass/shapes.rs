// Every supported argument and return shape, with the client signature each one gets.
use std::borrow::Cow;
use std::collections::HashMap;

use rpc_core::RpcError;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
pub struct Point {
    pub x: i32,
    pub y: i32,
}

#[derive(Serialize, Deserialize)]
pub enum Shape {
    Circle { r: f64 },
    Poly(Vec<Point>),
    Empty,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum AppError {
    Invalid(String),
    Rpc(RpcError),
}

impl From<RpcError> for AppError {
    fn from(e: RpcError) -> Self {
        AppError::Rpc(e)
    }
}

/// Naming `Result` through an alias keeps it whole: the client returns `Result<Reply, RpcError>`.
pub type Reply = Result<u32, String>;

/// A one-argument `Result` alias is a plain type too.
pub mod io {
    pub type Result<T> = std::result::Result<T, String>;
}

#[rpc_core::service]
pub trait Shapes {
    async fn structs(&self, p: Point) -> Point;
    async fn enums(&self, s: Shape) -> Shape;
    async fn tuples(&self, t: (u8, String, (bool, char))) -> (u8, u8);
    async fn collections(&self, v: Vec<Point>, m: HashMap<String, Vec<u8>>) -> Option<Vec<Shape>>;
    async fn arrays(&self, a: [u8; 4]) -> [u16; 2];
    async fn bytes(&self, b: serde_bytes::ByteBuf) -> serde_bytes::ByteBuf;
    async fn static_cow(&self, c: Cow<'static, str>) -> Cow<'static, str>;
    async fn unit_return(&self) -> ();
    async fn no_return(&self, p: Point);
    async fn fallible(&self) -> Result<Point, AppError>;
    async fn fallible_unit(&self) -> std::result::Result<(), AppError>;
    async fn fallible_core(&self) -> ::core::result::Result<u8, AppError>;
    async fn alias(&self) -> Reply;
    async fn io_result(&self) -> io::Result<u8>;
    async fn nested(&self) -> Option<Result<u8, String>>;
    async fn many(&self, a: u8, b: u16, c: u32, d: u64, e: i8, f: i16, g: i32, h: i64) -> u128;
    #[oneway]
    async fn fire(&self, p: Point);
}

struct Impl;

impl Shapes for Impl {
    async fn structs(&self, p: Point) -> Point {
        p
    }
    async fn enums(&self, s: Shape) -> Shape {
        s
    }
    async fn tuples(&self, t: (u8, String, (bool, char))) -> (u8, u8) {
        (t.0, 0)
    }
    async fn collections(&self, _v: Vec<Point>, _m: HashMap<String, Vec<u8>>) -> Option<Vec<Shape>> {
        None
    }
    async fn arrays(&self, a: [u8; 4]) -> [u16; 2] {
        [a[0].into(), 0]
    }
    async fn bytes(&self, b: serde_bytes::ByteBuf) -> serde_bytes::ByteBuf {
        b
    }
    async fn static_cow(&self, c: Cow<'static, str>) -> Cow<'static, str> {
        c
    }
    async fn unit_return(&self) {}
    async fn no_return(&self, _p: Point) {}
    async fn fallible(&self) -> Result<Point, AppError> {
        Err(AppError::Invalid("no".into()))
    }
    async fn fallible_unit(&self) -> Result<(), AppError> {
        Ok(())
    }
    async fn fallible_core(&self) -> Result<u8, AppError> {
        Ok(1)
    }
    async fn alias(&self) -> Reply {
        Err("no".into())
    }
    async fn io_result(&self) -> io::Result<u8> {
        Ok(1)
    }
    async fn nested(&self) -> Option<Result<u8, String>> {
        None
    }
    #[allow(clippy::too_many_arguments)]
    async fn many(&self, a: u8, b: u16, c: u32, d: u64, e: i8, f: i16, g: i32, h: i64) -> u128 {
        u128::from(a) + u128::from(b) + u128::from(c) + u128::from(d) + (e + f as i8) as u128 + (g as i64 + h) as u128
    }
    async fn fire(&self, _p: Point) {}
}

// The client signature of each shape.
#[allow(dead_code, clippy::type_complexity)]
async fn client_signatures(c: ShapesClient) {
    let _: Result<Point, RpcError> = c.structs(Point { x: 0, y: 0 }).await;
    let _: Result<(u8, u8), RpcError> = c.tuples((1, String::new(), (true, 'x'))).await;
    let _: Result<Option<Vec<Shape>>, RpcError> = c.collections(Vec::new(), HashMap::new()).await;
    let _: Result<(), RpcError> = c.unit_return().await;
    let _: Result<(), RpcError> = c.no_return(Point { x: 0, y: 0 }).await;
    let _: Result<Point, AppError> = c.fallible().await;
    let _: Result<(), AppError> = c.fallible_unit().await;
    let _: Result<u8, AppError> = c.fallible_core().await;
    let _: Result<Reply, RpcError> = c.alias().await;
    let _: Result<io::Result<u8>, RpcError> = c.io_result().await;
    let _: Result<Option<Result<u8, String>>, RpcError> = c.nested().await;
    let _: Result<u128, RpcError> = c.many(1, 2, 3, 4, 5, 6, 7, 8).await;
    let _: Result<(), RpcError> = c.fire(Point { x: 0, y: 0 }).await;
}

// Client futures can be spawned: they are `Send + 'static` once they own the client.
#[allow(dead_code)]
fn client_futures_are_send(c: ShapesClient) {
    fn is_send<T: Send + 'static>(_: T) {}
    is_send(async move { c.structs(Point { x: 1, y: 2 }).await });
}

fn main() {
    let _server = rpc_core::Server::new(ShapesServer::new(Impl));
}
